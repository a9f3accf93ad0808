"""Synchronising calls: holding a client until its completion is known.

Modules, bottom up: `publish` (the interface poll-detected completions leave through), `wait`
(the one wait primitive: stream, poll, budget, client), `answers` (success, failure, fallback),
`track` (the Redis record of a 202'd call), `polling` (a call's poll task), `call` (the
synchronised call) and `longpoll` (held GETs of a tracked Location).
"""
