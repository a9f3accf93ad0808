"""The example webhook receiver, run from a checkout: verify, deduplicate, print.

    .venv/bin/python -m examples.webhook_receiver --port 9100 --secret whsec_...
    WEBHOOK_SECRET=whsec_... .venv/bin/python -m examples.webhook_receiver --port 9100

It is the package's receiver (`sidecar/receiver.py`), which an installed sidecar runs as
`sidecar receiver` (with `pip install 'sidecar[receiver]'`); read that module for what it answers
and why.
"""

from __future__ import annotations

from sidecar.receiver import RECEIVER, Receiver, SeenIds, create_app, worker_ctx
from sidecar.receiver import main as _main

__all__ = ["RECEIVER", "Receiver", "SeenIds", "create_app", "main", "worker_ctx"]


def main(argv: list[str] | None = None) -> None:
    """`python -m examples.webhook_receiver`: receive webhooks until SIGINT/SIGTERM."""
    _main(argv, prog="python -m examples.webhook_receiver")


if __name__ == "__main__":
    main()
