"""Who may use the station and which files it may touch.

* **Folders.** The station reads and writes only inside the folders it was given (the data
  folder, the study's folder, the bundled sample): :meth:`Folders.inside` refuses absolute
  paths, ``..`` components and anything whose real path (symbolic links resolved) leaves
  the folder.
* **Tokens.** Bound to 127.0.0.1 (the default) the station needs no token: only this
  machine's users reach it. Bound to any other address every HTTP request and the
  websocket must carry an access token: ``?token=...`` on the first page load, which sets
  an HttpOnly, SameSite=Strict cookie that the page's later requests and its websocket
  send. With a study, each reader gets a token of their own and the station serves one
  reader at a time: a connection with another reader's token is refused while a reader is
  connected, so each reader sees and writes only their own worklist and results.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from breasttumorseg.errors import InputError

TOKEN_COOKIE = "breasttumorseg_token"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class Folders:
    """The folders the station may use, each with a name shown to the user."""

    def __init__(self, folders: dict[str, Path]):
        self.roots = {name: Path(path).resolve(strict=True) for name, path in folders.items() if path is not None}

    def inside(self, root: str, relative: str) -> Path:
        """``relative`` resolved inside the folder ``root``; :class:`InputError` when it is
        absolute, has a ``..`` component or leads outside (also through a symbolic link)."""
        base = self.roots.get(root)
        if base is None:
            raise InputError(f"no folder '{root}' is open on this station")
        text = str(relative)
        parts = PurePosixPath(text.replace("\\", "/")).parts
        if not text or text.startswith(("/", "\\")) or (len(text) > 1 and text[1] == ":"):
            raise InputError(f"'{text}' is not a path inside the {root} folder")
        if ".." in parts:
            raise InputError(f"'{text}' leaves the {root} folder ('..' is not allowed)")
        resolved = (base / text).resolve()
        if resolved != base and base not in resolved.parents:
            raise InputError(f"'{text}' leads outside the {root} folder")
        return resolved


@dataclass
class AccessPolicy:
    """Tokens and the reader each belongs to (None: any reader may be chosen in the page)."""

    require_token: bool
    tokens: dict[str, str | None] = field(default_factory=dict)
    active_reader: str | None = None
    _connections: int = 0

    @classmethod
    def for_host(cls, host: str, readers: list[str], token: str | None = None) -> "AccessPolicy":
        """No tokens on a local address; else one per reader (or one for all without a study)."""
        if host in LOCAL_HOSTS and token is None:
            return cls(require_token=False)
        if readers:
            return cls(True, {secrets.token_urlsafe(24): reader for reader in readers})
        return cls(True, {token or secrets.token_urlsafe(24): None})

    def reader_of(self, token: str | None) -> str | None:
        """The reader a token belongs to; :class:`PermissionError` for a wrong or missing token."""
        if not self.require_token:
            return None
        for known, reader in self.tokens.items():
            if token is not None and hmac.compare_digest(known.encode(), token.encode()):
                return reader
        raise PermissionError("a valid access token is required")

    def connect(self, reader: str | None) -> None:
        """A websocket of ``reader`` opens; refused while another reader is connected."""
        if self._connections and reader != self.active_reader:
            raise PermissionError("the station is in use by another reader")
        self.active_reader = reader
        self._connections += 1

    def disconnect(self) -> None:
        self._connections = max(0, self._connections - 1)

    def addresses(self, base_url: str) -> list[tuple[str | None, str]]:
        """(reader, URL to open) for each token; the bare URL without tokens."""
        if not self.require_token:
            return [(None, base_url)]
        return [(reader, f"{base_url}?token={token}") for token, reader in self.tokens.items()]


def token_middleware(policy: AccessPolicy):
    """An aiohttp middleware enforcing ``policy`` on every request and the websocket."""
    from aiohttp import web

    @web.middleware
    async def check_token(request, handler):
        if not policy.require_token:
            return await handler(request)
        token = request.query.get("token") or request.cookies.get(TOKEN_COOKIE)
        try:
            reader = policy.reader_of(token)
        except PermissionError as error:
            return web.Response(status=403, text=f"{error}\n")
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        if websocket:
            try:
                policy.connect(reader)
            except PermissionError as error:
                return web.Response(status=409, text=f"{error}\n")
            try:
                return await handler(request)
            finally:
                policy.disconnect()
        response = await handler(request)
        if "token" in request.query:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response

    return check_token
