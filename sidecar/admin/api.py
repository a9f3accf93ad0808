"""The admin JSON API, mounted at `/admin/api` on the admin listener: every endpoint in one
list, in the order the OpenAPI document shows them.

Answers are JSON built through the answer models (`views`); errors are problem+json, made by the
admin listener's error boundary: 400 malformed JSON, 401 no credential (or a session that cannot
be used), 403 a read-only session's write, 404, 409, 422 invalid fields (every problem listed),
429, 503 without Redis or while it fails.
"""

from __future__ import annotations

from aiohttp import web

from . import catalog, messages, openapi, operations, portal_sessions, subscriptions
from .endpoints import Handler, mount

ENDPOINTS: tuple[Handler, ...] = (
    portal_sessions.sign_in,
    portal_sessions.create_portal_session,
    portal_sessions.delete_portal_session,
    portal_sessions.me,
    subscriptions.list_subscriptions,
    subscriptions.create_subscription,
    subscriptions.get_subscription,
    subscriptions.patch_subscription,
    subscriptions.delete_subscription,
    subscriptions.rotate_secret,
    subscriptions.reveal_secret,
    subscriptions.subscription_stats,
    subscriptions.send_test,
    messages.list_attempts,
    messages.redeliver,
    messages.recover,
    messages.list_messages,
    messages.get_message,
    catalog.event_types,
    operations.get_operation,
    operations.expunge_operation,
    openapi.openapi_json,
)


def api_app() -> web.Application:
    """The API as a sub-app (mount it at `/admin/api`)."""
    api = web.Application()
    mount(api, ENDPOINTS)
    return api
