"""The open-files warning at start: said when the limit cannot hold what the config admits,
not on a machine whose limit can (each case in a child process: limits only go down)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHILD = """
import json, logging, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[1])))
from sidecar.config import Settings
from sidecar.process import raise_open_files_limit

class Keep(logging.Handler):
    said = []
    def emit(self, record):
        self.said.append({"wanted": record.wanted, "limit": record.limit})

logging.getLogger("sidecar.server").addHandler(Keep())
raw = {"upstream": "http://127.0.0.1:9", "clients": {"max_connections": int(sys.argv[2])}}
raise_open_files_limit(Settings(**raw))
print(json.dumps(Keep.said))
"""


def warnings_with(limit: int, max_connections: int) -> list[dict[str, int]]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(limit), str(max_connections)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: list[dict[str, int]] = json.loads(out)
    return result


@pytest.mark.parametrize(
    ("limit", "max_connections", "warned"),
    [
        (20_000, 10_000, False),  # the defaults fit a common limit: no warning at every start
        (4_096, 10_000, True),  # 10,000 clients + 1,000 pooled upstream connections do not
        (4_096, 2_000, False),
    ],
)
def test_the_open_files_warning(limit: int, max_connections: int, warned: bool) -> None:
    said = warnings_with(limit, max_connections)
    if warned:
        assert said == [{"wanted": max_connections + 1000 + 256, "limit": limit}]
    else:
        assert said == []
