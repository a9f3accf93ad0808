"""Redis faults told apart from bugs of ours.

fault   Redis away, slow, read-only, full or failing over (`REDIS_FAULTS`): the deployment's,
        answered 503 (or a fallback), logged as one WARNING without traceback, counted in
        `sidecar_redis_faults_total{where}`
bug     any other `RedisError` (a `ResponseError` such as WRONGTYPE or a syntax error, a
        `DataError`): ours, answered 500 and logged at ERROR with its traceback
"""

from __future__ import annotations

from redis._parsers.base import BaseParser
from redis.exceptions import (
    AskError,
    ClusterError,
    InvalidResponse,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class RedisStateError(ResponseError):
    """Redis refusing a command for a state of its own: busy with a script (`BUSY`), unable to
    persist (`MISCONF`), short of replicas (`NOREPLICAS`). redis-py raises a plain
    `ResponseError` for these; they are mapped to this class so that they count as faults."""


for _code in ("BUSY", "MISCONF", "NOREPLICAS"):
    BaseParser.EXCEPTION_CLASSES.setdefault(_code, RedisStateError)

REDIS_FAULTS: tuple[type[Exception], ...] = (
    RedisConnectionError,  # refused, reset, closed; also LOADING, a wrong password, a full pool
    RedisTimeoutError,
    OSError,  # TimeoutError (asyncio's, a batch's bound) is one too
    ReadOnlyError,  # a demoted primary (a failover)
    ClusterError,  # CLUSTERDOWN, MASTERDOWN
    TryAgainError,
    AskError,  # MOVED and ASK left over by a resharding
    OutOfMemoryError,  # maxmemory reached
    NoPermissionError,  # the ACL does not allow the command: the operator's setting
    RedisStateError,
    InvalidResponse,  # not a Redis at the other end, or a garbled reply
    RedisClusterException,  # redis-py's cluster client reaching no node
)
"""What a Redis command raises when Redis is away, slow, read-only, full or failing over: a
fault of the deployment, answered 503 and logged as a WARNING without traceback. Any other
`RedisError` (a `ResponseError` such as WRONGTYPE or a syntax error, a `DataError`) is a bug
of ours: it reaches the boundary as one (500, logged with its traceback)."""
