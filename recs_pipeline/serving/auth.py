"""API keys with scopes for the scoring service (docs/SECURITY.md, "Authentication").

A key is sent as ``Authorization: Bearer <key>`` (or ``X-API-Key: <key>``). The keys file
(``RECS_API_KEYS_FILE``, default ``<home>/secrets/api_keys.json``, mode 0600) holds for each key its
name, scopes and SHA-256 hash, never the key itself::

    {"keys": [{"name": "shop", "scopes": ["events:write", "recommendations:read"],
               "sha256": "<hex>", "created": "2026-12-02T01:00:00+00:00"}]}

Create one (the key is printed once, only its hash is stored)::

    python -m recs_pipeline.serving.auth new-key --name shop --scopes events:write,recommendations:read

Scopes: ``events:write`` (POST /events, POST /items), ``recommendations:read`` (GET
/recommendations/..., the item endpoints, POST /recommendations/cart), ``admin`` (every scope, and
/metrics). ``RECS_AUTH`` = auto (default: off with the embedded demo profile only), on or off
(:class:`recs_pipeline.settings.AuthSettings`). A presented key is hashed and compared with every
stored hash with :func:`hmac.compare_digest`; the key is never logged nor echoed: handlers, the
access log and the rate limits see its name (:class:`Principal`).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from recs_pipeline.settings import AuthSettings, Settings

EVENTS_WRITE = "events:write"
RECOMMENDATIONS_READ = "recommendations:read"
ADMIN = "admin"
SCOPES = (EVENTS_WRITE, RECOMMENDATIONS_READ, ADMIN)
# the name requests carry when authentication is off (one shared write budget)
ANONYMOUS = "anonymous"
KEY_PREFIX = "recs_"

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key: `X-API-Key: <key>`")


class AuthError(Exception):
    """A refused request: 401 (no or unknown key) or 403 (a scope missing); ``reason`` is a metrics label."""

    def __init__(self, status: int, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.status, self.detail, self.reason = status, detail, reason

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="recs"'} if self.status == 401 else {}


class AuthConfigError(RuntimeError):
    """Authentication is on but no usable key is configured: the service does not start."""


@dataclass(frozen=True)
class Principal:
    """Who a request is: the key's name (never the key) and its scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes


@dataclass(frozen=True)
class StoredKey:
    name: str
    scopes: frozenset[str]
    sha256: bytes


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_scopes(text: str | Sequence[str]) -> frozenset[str]:
    """``"events:write,recommendations:read"`` (or a list) -> scopes; raises ValueError naming an unknown one."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    scopes = frozenset(p.strip() for p in parts if p.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}; got {', '.join(unknown) or 'none'}")
    return scopes


def read_keys(path: Path) -> list[StoredKey]:
    """The keys of the keys file (empty when it does not exist); raises ValueError naming a bad entry."""
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8")).get("keys", [])
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"the API keys file {path} is not a JSON object with a `keys` list: {exc}") from None
    keys = []
    for i, entry in enumerate(entries):
        try:
            digest = bytes.fromhex(entry["sha256"])
            if len(digest) != 32:
                raise ValueError("sha256 is not 64 hex digits")
            keys.append(StoredKey(str(entry["name"]), parse_scopes(entry["scopes"]), digest))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the API keys file {path}: entry {i} is invalid ({exc})") from None
    return keys


def new_key(path: Path, *, name: str, scopes: str | Sequence[str]) -> str:
    """Create a key named ``name`` with ``scopes``, append its hash to the keys file (created with mode
    0600; written atomically) and return the key, which is stored nowhere."""
    parsed = parse_scopes(scopes)
    if not name.strip():
        raise ValueError("a key needs a name (it is what logs and limits show)")
    existing = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"keys": []}
    read_keys(path)  # refuse to append to a broken file
    if any(entry["name"] == name for entry in existing["keys"]):
        raise ValueError(f"a key named {name!r} exists in {path}: names must be unique")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    existing["keys"].append(
        {
            "name": name,
            "scopes": sorted(parsed),
            "sha256": key_hash(key).hex(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(existing, f, indent=2)
    os.replace(tmp, path)
    return key


class Authenticator:
    """Checks the keys of requests against the keys file (re-read when it changes).

    ``enabled=False``: every request is :data:`ANONYMOUS` with every scope.
    """

    def __init__(self, path: Path, *, enabled: bool, on_refused: Callable[[int, str], None] | None = None) -> None:
        self.path, self.enabled = path, enabled
        self.on_refused = on_refused or (lambda status, reason: None)
        self._lock = threading.Lock()
        self._state: tuple[int, int] | None = None
        self._keys: list[StoredKey] = []
        if enabled:
            self._reload()
            if not self._keys:
                raise AuthConfigError(
                    f"authentication is on (RECS_AUTH, or a production Feast profile) but {path} holds no API key: "
                    "create one with `python -m recs_pipeline.serving.auth new-key --name <client> --scopes "
                    "events:write,recommendations:read` (or set RECS_API_KEYS_FILE; RECS_AUTH=off only for a demo)"
                )

    @classmethod
    def from_settings(
        cls, settings: Settings, auth: AuthSettings, on_refused: Callable[[int, str], None] | None = None
    ) -> Authenticator:
        return cls(auth.keys_path(settings), enabled=auth.enabled(settings), on_refused=on_refused)

    def _reload(self) -> None:
        """Re-read the keys file when its size, time or inode changed (one stat a request)."""
        try:
            st = self.path.stat()
            state = (st.st_mtime_ns, st.st_size ^ (st.st_ino << 20))
        except FileNotFoundError:
            state = (0, 0)
        if state == self._state:
            return
        with self._lock:
            if state != self._state:
                self._keys = read_keys(self.path)
                self._state = state

    def identify(self, key: str | None) -> Principal:
        """The principal of a presented key; raises :class:`AuthError` (401) when missing or unknown."""
        if not key:
            raise self._refuse(401, "missing", "an API key is required: send `Authorization: Bearer <key>`")
        self._reload()
        digest = key_hash(key)
        found = None
        for stored in self._keys:  # every hash compared: the time does not tell which one matched
            if hmac.compare_digest(stored.sha256, digest):
                found = stored
        if found is None:
            raise self._refuse(401, "unknown", "the API key is not valid (unknown or revoked)")
        return Principal(found.name, found.scopes)

    def _refuse(self, status: int, reason: str, detail: str) -> AuthError:
        self.on_refused(status, reason)
        return AuthError(status, detail, reason)

    def require(self, scope: str) -> Callable[..., Any]:
        """A FastAPI dependency: the request's :class:`Principal` when its key has ``scope``, else
        :class:`AuthError`. It declares the Bearer and X-API-Key schemes in OpenAPI (when enabled)."""
        if not self.enabled:

            def anonymous(request: Request) -> Principal:
                principal = Principal(ANONYMOUS, frozenset(SCOPES))
                request.state.principal = principal
                return principal

            return anonymous

        def check(
            request: Request,
            bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
            header_key: Annotated[str | None, Depends(_api_key_header)],
        ) -> Principal:
            principal = self.identify(bearer.credentials if bearer is not None else header_key)
            request.state.principal = principal
            if not principal.allows(scope):
                raise self._refuse(
                    403,
                    f"scope:{scope}",
                    f"the API key {principal.name!r} lacks the scope {scope!r} (it has: "
                    f"{', '.join(sorted(principal.scopes))})",
                )
            return principal

        return check


def client_headers(auth: AuthSettings | None = None) -> dict[str, str]:
    """Headers a client of the service sends: ``Authorization: Bearer $RECS_API_KEY`` when it is set."""
    key = (auth or AuthSettings.from_env()).api_key
    return {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m recs_pipeline.serving.auth new-key --name NAME --scopes S1,S2`` (keys file from settings)."""
    parser = argparse.ArgumentParser(prog="python -m recs_pipeline.serving.auth", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("new-key", help="create a key, store its hash, print it once")
    create.add_argument("--name", required=True, help="who uses it (shown in logs and limits)")
    create.add_argument("--scopes", required=True, help=f"comma-separated, among {', '.join(SCOPES)}")
    create.add_argument("--file", type=Path, help="the keys file (default: RECS_API_KEYS_FILE or <home>/secrets/)")
    args = parser.parse_args(argv)
    path = args.file or AuthSettings.from_env().keys_path(Settings.from_env())
    try:
        key = new_key(path, name=args.name, scopes=args.scopes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"created key {args.name!r} in {path}; it is shown once, store it now:", file=sys.stderr)
    print(key)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
