"""A protocol-level client of the browser station: what the page does, without a browser.

The station's page talks to it over one websocket in wslink's protocol (msgpack messages,
cut into chunks with a 12-byte header: message id, offset, total size). This client does
what the page does on load (``wslink.hello``, ``trame.state.get``, the ``client_connected``
life-cycle call) and then what a reader's clicks and slider moves do:

* a click on a button is ``trame.trigger`` with the trigger name the page's template gives
  that button (found by the button's ``id``, as a browser test finds it by selector);
* a slider move or a choice in a list is ``trame.state.update``; the station runs its change
  handlers before it answers, so the answer's arrival is the handler's end;
* the station's own state changes arrive as ``trame.state.topic`` publications, kept in
  :attr:`StationClient.state`.

Only for tests and benchmarks (asyncio, aiohttp, msgpack: the station's own dependencies).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time

import aiohttp
import msgpack

#: The wslink secret trame's page sends (the station's own checks are Host, Origin and tokens).
WSLINK_SECRET = "wslink-secret"
_HEADER = 12


def _chunk(message: bytes) -> bytes:
    ident = int.from_bytes(secrets.token_bytes(4), "little")
    header = ident.to_bytes(4, "little") + (0).to_bytes(4, "little") + len(message).to_bytes(4, "little")
    return header + message


class StationError(RuntimeError):
    """The station answered a call with an error."""


class StationClient:
    """One page's session with a station at ``base`` (``http://host:port``)."""

    def __init__(self, base: str, token: str | None = None):
        self.base = base.rstrip("/")
        self.token = token
        self.state: dict = {}
        self._http = None
        self._socket = None
        self._next_id = 0
        self._pending: dict[str, asyncio.Future] = {}
        self._parts: dict[int, tuple] = {}  # message id -> (buffer, bytes received)
        self._changed = asyncio.Event()
        self._receiver = None

    async def __aenter__(self) -> "StationClient":
        await self.connect()
        return self

    async def __aexit__(self, *_) -> None:
        await self.close()

    async def connect(self) -> None:
        """Load the page (with the token, which sets the cookie), open the websocket, say hello,
        read the state and tell the station a client connected."""
        self._http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        page = f"{self.base}/" + (f"?token={self.token}" if self.token else "")
        async with self._http.get(page) as response:
            if response.status != 200:
                raise StationError(f"{page}: HTTP {response.status} {await response.text()}")
        self._socket = await self._http.ws_connect(f"{self.base}/ws", origin=self.base, max_msg_size=0)
        self._receiver = asyncio.create_task(self._receive())
        await self.call("wslink.hello", [{"secret": WSLINK_SECRET}], system=True)
        initial = await self.call("trame.state.get")
        self.state.update(initial["state"])
        await self.call("trame.lifecycle.update", ["client_connected"])

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._receiver is not None:
            self._receiver.cancel()
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------------------- the page's actions
    async def call(self, method: str, args=None, kwargs=None, *, system: bool = False):
        """One RPC; its result, or :class:`StationError` with the station's message."""
        self._next_id += 1
        ident = f"{'system' if system else 'rpc'}:c0:{self._next_id}"
        future = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        message = {"wslink": "1.0", "id": ident, "method": method, "args": list(args or []), "kwargs": kwargs or {}}
        await self._socket.send_bytes(_chunk(msgpack.packb(message)))
        return await future

    async def click(self, element_id: str):
        """What a click on the page's button ``element_id`` does; returns once its handler ran
        (the state it changed may arrive just after: :meth:`wait_for` it)."""
        name, args = self.trigger_of(element_id)
        return await self.call("trame.trigger", [name, args, {}])

    async def set(self, **values) -> None:
        """What a slider move or a choice does: the station's handlers have run on return."""
        self.state.update(values)
        await self.call("trame.state.update", [[{"key": key, "value": value} for key, value in values.items()]])

    async def wait_for(self, condition, timeout: float = 60.0, what: str = "") -> dict:
        """Wait until ``condition(state)`` holds; :class:`TimeoutError` naming ``what``."""
        deadline = time.monotonic() + timeout
        while not condition(self.state):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.base}: {what or 'condition'} not met in {timeout:g} s; "
                                   f"error={self.state.get('bts_error')!r} message={self.state.get('bts_message')!r}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))
            except asyncio.TimeoutError:
                pass
        return self.state

    def trigger_of(self, element_id: str) -> tuple[str, list]:
        """(trigger name, arguments) of the click handler of the element ``id="element_id"`` in
        the page's templates (trame names handlers ``trigger__<n>`` when it builds the page)."""
        for key, template in self.state.items():
            if not key.startswith("trame__template_") or not isinstance(template, str):
                continue
            tag = re.search(rf'<[^<>]*\bid="{re.escape(element_id)}"[^<>]*>', template)
            if tag:
                found = re.search(r"""@click="trigger\('([^']+)'(?:,\s*(\[[^\]]*\]))?""", tag.group(0))
                if found:
                    args = json.loads(found.group(2).replace("'", '"')) if found.group(2) else []
                    return found.group(1), args
        raise KeyError(f"no clickable element with id '{element_id}' in the page")

    # ------------------------------------------------------------------------- receiving
    async def _receive(self) -> None:
        async for frame in self._socket:
            if frame.type != aiohttp.WSMsgType.BINARY:
                continue
            message = self._unchunk(frame.data)
            if message is None:
                continue
            ident = message.get("id", "")
            if ident.startswith("publish:trame.state.topic"):
                self.state.update(message.get("result") or {})
                self._changed.set()
            elif ident in self._pending:
                future = self._pending.pop(ident)
                if "error" in message:
                    future.set_exception(StationError(f"{ident}: {message['error']}"))
                else:
                    future.set_result(message.get("result"))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(StationError(f"{self.base}: the connection closed"))

    def _unchunk(self, data: bytes):
        ident = int.from_bytes(data[0:4], "little")
        offset = int.from_bytes(data[4:8], "little")
        size = int.from_bytes(data[8:12], "little")
        if offset == 0 and len(data) - _HEADER >= size:
            return msgpack.unpackb(data[_HEADER:], strict_map_key=False)
        buffer, received = self._parts.get(ident, (bytearray(size), 0))
        buffer[offset:offset + len(data) - _HEADER] = data[_HEADER:]
        received += len(data) - _HEADER
        if received < size:
            self._parts[ident] = (buffer, received)
            return None
        self._parts.pop(ident, None)
        return msgpack.unpackb(bytes(buffer), strict_map_key=False)
