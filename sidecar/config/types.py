"""The scalar types of the config file: durations, sizes, counts or `auto`, addresses, URLs,
header names, JSON pointers, HTTP statuses, secrets read from files; and `Model`, the base of
every block (unknown keys are errors, values are frozen)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
)

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from `250ms`, `10s`, `2m`, `1h` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r} (use 250ms, 10s, 2m or seconds)")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid duration {value!r} (must not be negative)")
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"invalid duration {value!r} (use 250ms, 10s, 2m or seconds)")


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$"},
            ],
            "description": "Duration: 250ms, 10s, 2m, 1h or seconds.",
        }
    ),
]


def _check_pointer(value: str) -> str:
    if value != "" and not value.startswith("/"):
        raise ValueError(f"invalid JSON pointer {value!r} (must be empty or start with '/')")
    if re.search(r"~(?![01])", value):
        raise ValueError(f"invalid JSON pointer {value!r} ('~' must be followed by 0 or 1)")
    return value


JsonPointer = Annotated[str, AfterValidator(_check_pointer)]


def _check_status(value: int) -> int:
    if not 100 <= value <= 599:
        raise ValueError(f"invalid HTTP status {value} (must be 100-599)")
    return value


StatusCode = Annotated[int, AfterValidator(_check_status)]


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid address {value!r} (use host:port, e.g. 0.0.0.0:8080)")
    return value


def _number_as_text(value: object) -> object:
    # `listen: 8080` is read by YAML as a number: report it as an address, not a type error.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


ListenAddress = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_check_listen)]


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid URL {value!r} (use http://host:port or https://host)")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]


def _check_webhook_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid URL {value!r} (use http://host/path or https://host/path)")
    return value  # exactly as written: a receiver may care about a trailing slash


WebhookUrl = Annotated[str, AfterValidator(_check_webhook_url)]


def check_redis_url(value: str) -> str:
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"invalid Redis URL {value!r} (use redis://host:port/db)")
    return value


def _check_header_name(value: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise ValueError(f"invalid header name {value!r}")
    return value


HeaderName = Annotated[str, AfterValidator(_check_header_name)]


def check_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"invalid network {value!r} (use CIDR, e.g. 10.0.0.0/8)") from None
    return value


def blank_is_none(value: object) -> object:
    # `admin_token: ${SIDECAR_ADMIN_TOKEN:-}` with the variable unset means "no token", never
    # an empty token that an empty `Bearer` would match.
    return None if isinstance(value, str) and not value.strip() else value


def secret_from_file(data: Any, key: str) -> Any:
    """`<key>_file` (a path, as Kubernetes mounts secrets) read into `<key>`: the file's text
    without its trailing newline. Both set is an error, as is a file that cannot be read."""
    if not isinstance(data, Mapping) or not data.get(f"{key}_file"):
        return data
    path = data[f"{key}_file"]
    if data.get(key) not in (None, ""):
        raise ValueError(f"{key} and {key}_file are both set (use one)")
    try:
        text = Path(str(path)).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{key}_file: cannot read {path!r} ({exc.strerror})") from None
    return {**data, key: text.rstrip("\r\n")}


SecretFile = Annotated[
    str | None, Field(None, description="A file holding the secret (its text, less one newline).")
]


class Model(BaseModel):
    """Base of every config block: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "k": 1024,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
}


def parse_size(value: object) -> int:
    """Bytes from `10MiB`, `512KiB`, `1GB` or a plain number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    raise ValueError(f"invalid size {value!r} (use 10MiB, 512KiB, 1GB or bytes)")


def parse_count_or_auto(value: object) -> int | Literal["auto"]:
    """A count of at least 1 (a number, or its digits), or `auto`, said in one problem."""
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"invalid count {value!r} (a whole number of at least 1, or auto)")


CountOrAuto = Annotated[
    int | Literal["auto"],
    PlainValidator(parse_count_or_auto),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "const": "auto"}],
            "description": "A whole number of at least 1, or auto.",
        }
    ),
]


ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {
                    "type": "string",
                    "pattern": r"^\s*\d+(\.\d+)?\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$",
                },
            ],
            "description": "Size: 10MiB, 512KiB, 1GB or bytes.",
        }
    ),
]
