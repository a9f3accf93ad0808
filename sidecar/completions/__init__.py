"""Completions: what one is, the one decoder, the waiters it wakes, and how a call learns its own.

completion   `Event` (a decoded message) and `Completion` (the result of one call)
decoder      the one decoder: a message becomes an event, an event finds its route
hub          the in-memory waiters and the recent-completion cache
poll         polling a Location: verdicts, redirects, Retry-After, backoff
publish      how completions a call learnt itself (by polling) reach webhooks
"""
