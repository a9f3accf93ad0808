"""The package stays readable: no module so long that a newcomer cannot find what it decides.
(Imports running down the layers, with no cycle, are held by `lint-imports` in `make lint`.)"""

from __future__ import annotations

from pathlib import Path

SIDECAR = Path(__file__).resolve().parents[1] / "sidecar"
MAX_LINES = 500


def test_no_module_is_longer_than_500_lines() -> None:
    long = {
        str(path.relative_to(SIDECAR)): n
        for path in SIDECAR.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these by responsibility: {long}"
