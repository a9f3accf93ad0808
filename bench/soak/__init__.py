"""The soak harness: replicas of the sidecar, the example API, a verifying receiver that fails and
hangs a little, load with bursts and faults on a schedule, and a ledger of what was delivered
(docs/soak.md). `soak(Options(...))` runs one; `python -m bench.soak` is the command line."""

from .run import Options, soak

__all__ = ["Options", "soak"]
