"""Who may use the station and which files it may touch.

* **Folders and files.** The station reads and writes only inside the folders it was given
  (the data folder, the study's folder, the bundled sample), and checks every file, not only
  its folder: :meth:`Folders.inside` refuses absolute paths, ``..`` components and anything
  whose real path (every symbolic link followed) leaves the folder. A file is read only when
  :meth:`Folders.check_file` proves it inside: its real path is inside, it is a regular file
  and it has no other hard link (``st_nlink == 1``; a hard link is a second name of the same
  file, which may be outside, and nothing tells where). Reading pins the file:
  :meth:`Folders.pinned_files` opens each one by its real path one folder at a time without
  following links (a name swapped for a link after the check is refused), and hands the
  loader a private name of the open file (``/proc/self/fd``), so the file checked is the
  file read. Writing pins the folder the same way (:meth:`Folders.pinned_folder`).
* **The browser's own threats.** Loopback is no boundary against the reader's own browser: any
  page it shows may try the station. Every request must name the station in its ``Host``
  header (the served host, a loopback name or the address the connection arrived at, with
  the station's port), which defeats DNS rebinding (a page of ``attacker.example`` resolved
  to 127.0.0.1 sends ``Host: attacker.example``); a websocket whose ``Origin`` is not such an
  address (a page of another site or of another local port) is refused. Browsers always
  send ``Origin`` on a websocket; a client without one is not a page. Only GET and HEAD are
  served: everything that changes state goes through the page's websocket session. These
  checks hold with and without tokens.
* **Tokens.** Bound to 127.0.0.1 (the default) the station needs no token: only this
  machine's users reach it. Bound to any other address every HTTP request and the
  websocket must carry an access token: ``?token=...`` on the first page load, which sets
  an HttpOnly, SameSite=Strict cookie that the page's later requests and its websocket
  send. With a study, each reader gets a token of their own and the station serves one
  reader at a time: a connection with another reader's token is refused while a reader is
  connected, so each reader sees and writes only their own worklist and results.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from breasttumorseg.core.errors import InputError

TOKEN_COOKIE = "breasttumorseg_token"
_PROC_FD = Path("/proc/self/fd")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


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

    def check_file(self, root: str, path: Path) -> Path:
        """The real path of the file ``path`` (absolute, or relative to ``root``), proven
        inside ``root``; :class:`InputError` naming it when it is not (module docstring)."""
        fd = self._open_file(root, path)
        os.close(fd)
        return self._resolved(root, path)

    def is_confined_file(self, root: str, path: Path) -> bool:
        try:
            self.check_file(root, path)
        except InputError:
            return False
        return True

    @contextlib.contextmanager
    def pinned_files(self, root: str, paths) -> Iterator[list[Path]]:
        """Each file of ``paths`` checked and opened; yields names (same file names, in a
        private folder) that reach exactly the opened files whatever happens to the original
        names meanwhile. Without ``/proc/self/fd`` (not Linux) the checked real paths."""
        descriptors = []
        folder = None
        try:
            for path in paths:
                descriptors.append((Path(path).name, self._open_file(root, path)))
            if not _PROC_FD.is_dir():
                yield [self._resolved(root, path) for path in paths]
                return
            folder = Path(tempfile.mkdtemp(prefix="breasttumorseg-pinned-"))
            pinned = []
            for name, fd in descriptors:
                os.symlink(_PROC_FD / str(fd), folder / name)
                pinned.append(folder / name)
            yield pinned
        finally:
            for _, fd in descriptors:
                os.close(fd)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def pinned_folder(self, root: str, relative: str) -> Iterator[Path]:
        """The folder ``relative`` inside ``root`` (created as needed), opened without following
        links; yields a name of the opened folder (``/proc/self/fd/<n>``) so files written into
        it land there even if its name is swapped for a link meanwhile."""
        self.inside(root, relative)
        fd = os.open(self.roots[root], os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in PurePosixPath(relative.replace("\\", "/")).parts:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=fd)
                except OSError as error:
                    raise InputError(f"'{relative}' is not a folder inside the {root} folder "
                                     f"({error.strerror})") from None
                os.close(fd)
                fd = child
            yield _PROC_FD / str(fd) if _PROC_FD.is_dir() else self.inside(root, relative)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------------- internals
    def _resolved(self, root: str, path) -> Path:
        base = self.roots.get(root)
        if base is None:
            raise InputError(f"no folder '{root}' is open on this station")
        path = Path(path)
        resolved = (path if path.is_absolute() else base / path).resolve()
        if resolved == base or base not in resolved.parents:
            raise InputError(f"'{path}' leads outside the {root} folder")
        return resolved

    def _open_file(self, root: str, path) -> int:
        """A descriptor of the file ``path`` proven inside ``root`` (see :meth:`check_file`)."""
        resolved = self._resolved(root, path)
        parts = resolved.relative_to(self.roots[root]).parts
        fd = os.open(self.roots[root], os.O_RDONLY | os.O_DIRECTORY)
        try:
            for index, part in enumerate(parts):
                last = index == len(parts) - 1
                flags = os.O_RDONLY | _NOFOLLOW | (os.O_NONBLOCK if last else os.O_DIRECTORY)
                try:
                    child = os.open(part, flags, dir_fd=fd)
                except OSError as error:
                    raise InputError(f"'{path}' cannot be opened inside the {root} folder ({error.strerror}; "
                                     "was it changed while being opened?)") from None
                os.close(fd)
                fd = child
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InputError(f"'{path}' is not a regular file")
            if info.st_nlink != 1:
                raise InputError(f"'{path}' has {info.st_nlink} hard links; a file with other names may be "
                                 f"outside the {root} folder and is not read")
            return fd
        except BaseException:
            os.close(fd)
            raise


@dataclass
class AccessPolicy:
    """Tokens and the reader each belongs to (None: any reader may be chosen in the page)."""

    require_token: bool
    tokens: dict[str, str | None] = field(default_factory=dict)
    active_reader: str | None = None
    _connections: int = 0
    served_host: str = "127.0.0.1"

    @classmethod
    def for_host(cls, host: str, readers: list[str], token: str | None = None) -> "AccessPolicy":
        """No tokens on a local address; else one per reader (or one for all without a study)."""
        if host in LOCAL_HOSTS and token is None:
            return cls(require_token=False, served_host=host)
        if readers:
            return cls(True, {secrets.token_urlsafe(24): reader for reader in readers}, served_host=host)
        return cls(True, {token or secrets.token_urlsafe(24): None}, served_host=host)

    def host_names(self, local_address: str | None) -> set[str]:
        """The names a request may give as its host (lower case, IPv6 in brackets): loopback
        names, the served host, and the address the connection arrived at; on a wildcard
        address also this machine's host names."""
        names = {*LOCAL_HOSTS, self.served_host}
        if local_address:
            names.add(local_address)
        if self.served_host in WILDCARD_HOSTS:
            names |= {socket.gethostname(), socket.getfqdn()}
        return {f"[{name}]" if ":" in name else name.lower() for name in names if name}

    def allows_host(self, host_header: str | None, local_address: str | None, port: int | None) -> bool:
        """True when ``Host`` (``name:port``) names this station (see :meth:`host_names`)."""
        if not host_header:
            return False
        names = self.host_names(local_address)
        allowed = {f"{name}:{port}" for name in names}
        if port in (80, 443):
            allowed |= names
        return host_header.strip().lower() in allowed

    def allows_origin(self, origin: str | None, local_address: str | None, port: int | None) -> bool:
        """True when a websocket's ``Origin`` is a page of this station (absent: not a browser)."""
        if origin is None:
            return True
        scheme, _, rest = origin.partition("://")
        return scheme.lower() in ("http", "https") and "/" not in rest and self.allows_host(rest, local_address,
                                                                                             port)

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


def station_middleware(policy: AccessPolicy):
    """An aiohttp middleware enforcing ``policy`` on every request and the websocket: method,
    Host and Origin (the browser's threats), then the token where one is required."""
    from aiohttp import web

    @web.middleware
    async def check_request(request, handler):
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        local_address, port = (sockname[0], sockname[1]) if sockname else (None, None)
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="only GET is served; actions go through the page's session\n")
        if not policy.allows_host(request.headers.get("Host"), local_address, port):
            return web.Response(status=421, text="this request is not addressed to this station (Host)\n")
        if websocket and not policy.allows_origin(request.headers.get("Origin"), local_address, port):
            return web.Response(status=403, text="a page of another site or port may not use this station\n")
        if not policy.require_token:
            return await handler(request)
        token = request.query.get("token") or request.cookies.get(TOKEN_COOKIE)
        try:
            reader = policy.reader_of(token)
        except PermissionError as error:
            return web.Response(status=403, text=f"{error}\n")
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

    return check_request
