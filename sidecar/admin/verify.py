"""Whether the upstream knows a client credential (`tenancy.verify`), before the admin API or the
portal acts on it.

Without it any string is a tenant of its own, so per-tenant limits multiply with every string an
attacker invents; with it, only credentials the API itself accepts own subscriptions, messages or
portal sessions. The upstream is asked with the client's credential header alone:

    2xx          admitted
    401, 403     refused: the admin API answers 401 and creates nothing
    else, or no answer in `timeout`: 503 (the credential cannot be judged now; nothing is
                 admitted on a guess)

Verdicts are kept per credential (by its SHA-256, in this process) for `cache_for`, at most
`MAX_CACHED` of them, and concurrent checks of one credential share one request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict

from yarl import URL

from ..errors import Unauthorized, Unavailable
from ..http.pool import UpstreamPool
from ..http.upstream import UPSTREAM_ERRORS, upstream_errors
from ..logs import Every
from ..metrics import Metrics
from ..routing import Runtime

logger = logging.getLogger(__name__)

MAX_CACHED = 10_000
BODY_READ = 4096  # of the upstream's answer: read (and dropped) so the connection is reused
_failed_log = Every()


class CredentialVerifier:
    """Asks the upstream about credentials, and remembers its verdicts for a while."""

    def __init__(self, pool: UpstreamPool, runtime: Runtime, metrics: Metrics) -> None:
        self.pool, self.runtime, self.metrics = pool, runtime, metrics
        self._verdicts: OrderedDict[bytes, tuple[bool, float]] = OrderedDict()
        self._asking: dict[bytes, asyncio.Future[bool]] = {}

    @property
    def enabled(self) -> bool:
        """True when `tenancy.verify` is configured."""
        return self.runtime.settings.tenancy.verify is not None

    async def check(self, credential: str) -> None:
        """Return when the upstream admits `credential` (or nothing is to be verified); 401
        when it refuses it, 503 when it cannot say."""
        if not await self.admitted(credential):
            raise Unauthorized(
                "the API does not accept this credential",
                headers={"WWW-Authenticate": 'Bearer realm="sidecar-admin"'},
            )

    async def admitted(self, credential: str) -> bool:
        """The upstream's verdict on `credential` (cached); True without `tenancy.verify`."""
        spec = self.runtime.settings.tenancy.verify
        if spec is None:
            return True
        key = hashlib.sha256(credential.encode("utf-8", "surrogateescape")).digest()
        now = time.monotonic()
        cached = self._verdicts.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        asking = self._asking.get(key)
        if asking is None:
            asking = asyncio.get_running_loop().create_future()
            self._asking[key] = asking
            try:
                verdict = await self._ask(credential)
            except BaseException as exc:
                asking.set_exception(exc)
                asking.exception()  # seen here; waiters re-raise it
                raise
            finally:
                del self._asking[key]
            asking.set_result(verdict)
            self._remember(key, verdict, now + spec.cache_for)
            return verdict
        return await asyncio.shield(asking)

    def _remember(self, key: bytes, verdict: bool, until: float) -> None:
        self._verdicts[key] = (verdict, until)
        self._verdicts.move_to_end(key)
        while len(self._verdicts) > MAX_CACHED:
            self._verdicts.popitem(last=False)

    async def _ask(self, credential: str) -> bool:
        settings = self.runtime.settings
        spec = settings.tenancy.verify
        assert spec is not None
        url = URL(settings.upstream.rstrip("/") + spec.path, encoded=True)
        headers = {settings.tenancy.credential_header: credential}
        try:
            async with asyncio.timeout(spec.timeout):
                with upstream_errors():
                    async with await self.pool.request(spec.method, url, headers) as answer:
                        await answer.content.read(BODY_READ)
                        status = answer.status
        except (*UPSTREAM_ERRORS, TimeoutError) as exc:
            self.metrics.credential_checks.labels("error").inc()
            if _failed_log.ready():
                logger.warning(
                    "could not verify a credential with the upstream",
                    extra={"error": str(exc), "since_last_line": _failed_log.take_skipped()},
                )
            raise Unavailable("the API could not verify the credential now; try again") from None
        if 200 <= status < 300:
            self.metrics.credential_checks.labels("admitted").inc()
            return True
        if status in (401, 403):
            self.metrics.credential_checks.labels("refused").inc()
            return False
        self.metrics.credential_checks.labels("error").inc()
        raise Unavailable(f"the API answered {status} when asked about the credential")
