"""The users example: a legacy asynchronous API, its sidecar config and a demo."""
