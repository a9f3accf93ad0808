"""Runnable examples of the sidecar in front of asynchronous APIs."""
