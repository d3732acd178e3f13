"""Who may call: the Host header (against DNS rebinding) and API keys, before any route runs.

An ASGI wrapper around the app (service.frontend.server installs it only when one of the two
checks is on, so an open server pays nothing). The health probes are exempt from both: the
kubelet and load balancers call them with the pod's address and no key, and they reveal
nothing.

- Host: a browser page on an attacker's domain that resolves to 127.0.0.1 (DNS rebinding)
  reaches a loopback-bound server with its own name in the Host header; the server only
  answers the names in SAIT_ALLOWED_HOSTS (by default the loopback names when bound to
  loopback). 400 otherwise.
- API keys: `Authorization: Bearer <key>` against the keys of SAIT_API_KEYS_FILE (one a
  line), compared as SHA-256 digests with hmac.compare_digest against every key, so the time
  taken says nothing about how much of a key was right. 401 otherwise, with
  `WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from starlette.responses import JSONResponse

from service.frontend.fast_path import route_path
from service.frontend.http_metrics import HttpMetrics
from service.settings import SettingsError

PROBES = frozenset({"/v2/health/live", "/v2/health/ready"})
MIN_KEY_CHARS = 16


def load_api_keys(path: str) -> tuple[bytes, ...]:
    """SHA-256 digests of the keys in `path` (one a line; blank lines and `#` comments skipped).

    Raises:
        SettingsError: unreadable file, no key, or a key shorter than MIN_KEY_CHARS or with blanks.
    """
    where = "invalid setting SAIT_API_KEYS_FILE (--api-keys-file)"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{where}: cannot read {path}: {exc.__class__.__name__}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if len(key) < MIN_KEY_CHARS or any(c.isspace() for c in key):
            raise SettingsError(f"{where}: line {number} of {path} is not a key of {MIN_KEY_CHARS}+ characters")
        keys.append(hashlib.sha256(key.encode()).digest())
    if not keys:
        raise SettingsError(f"{where}: {path} holds no key")
    return tuple(keys)


def host_name(value: bytes) -> str:
    """The name of a Host header, lower case, without its port (IPv6 literals keep brackets)."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[: text.find("]") + 1] if "]" in text else text
    return text.rsplit(":", 1)[0].rstrip(".")


class Guard:
    """ASGI app: checks the Host header and the API key, then hands over to `app`.

    Args:
        app: the ASGI app behind (service.frontend.fast_path.FastInference).
        hosts: accepted Host names (service.settings.Settings.host_names), None for any.
        keys: digests from load_api_keys, None for no authentication.
        metrics: where refusals are counted.
    """

    def __init__(self, app, *, hosts: frozenset[str] | None, keys: tuple[bytes, ...] | None, metrics: HttpMetrics):
        self.app = app
        self.hosts = hosts
        self.keys = keys
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and route_path(scope) not in PROBES:
            refusal = self.check(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def check(self, scope) -> JSONResponse | None:
        """The refusal for this request, or None when it may pass."""
        host = auth = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"authorization":
                auth = value
        if self.hosts is not None and host is not None and host_name(host) not in self.hosts:
            message = f"Host {host[:80].decode('latin-1')!r} is not served here (SAIT_ALLOWED_HOSTS)"
            self.metrics.reject("host_not_allowed", message, scope.get("client"))
            return JSONResponse({"error": message}, status_code=400)
        if self.keys is not None and not self.authorized(auth):
            message = "missing or unknown API key: send 'Authorization: Bearer <key>'"
            self.metrics.reject("unauthorized", message, scope.get("client"))
            return JSONResponse({"error": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return None

    def authorized(self, header: bytes | None) -> bool:
        if header is None:
            return False
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return False
        digest = hashlib.sha256(token.strip()).digest()
        found = False
        for key in self.keys:  # every key, no early exit
            found |= hmac.compare_digest(digest, key)
        return found
