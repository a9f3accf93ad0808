"""Webhooks: signed, tenant-scoped, durable fan-out of completions (issue 5).

Modules, bottom up: `keys` (Redis key layout), `signing` (Standard Webhooks), `targets` (SSRF
policy and the guarded DNS resolver).
"""
