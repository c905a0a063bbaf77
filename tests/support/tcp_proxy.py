"""A fault-injecting TCP proxy on loopback, for network faults between gated and its peers.

`TcpProxy(target_host, target_port).start()` listens on a free loopback port and
forwards every connection to the target. Between the two, a test can:

* `cut()`: every connection is torn down at once and new ones are closed as soon as
  they are accepted (a cable pulled, a router rebooting, a VPN gone);
* `blackhole()`: connections stay up and new ones are accepted, but nothing flows in
  either direction (a NAT entry dropped, a link silently losing every packet). Bytes
  are not read, so they wait in the kernel's buffers as in TCP's own retransmissions:
  no stream is ever corrupted, it only stalls until the peers' keepalives give up;
* `resume()`: back to passing through; stalled connections that are still open
  carry on where they stopped.

The proxy runs its own asyncio loop in a thread, so both async and plain tests use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any

__all__ = ["TcpProxy"]

HOST = "127.0.0.1"
CHUNK = 65_536


class _Connection:
    """One proxied connection: the client's side, the target's side and the two pumps."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Reset both sides now (RST, as a dead path looks once a peer notices)."""
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            with contextlib.suppress(OSError):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """Forwards loopback connections to a target, with cut, black-hole and resume."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = HOST
        self.port = port
        self.mode = "pass"  # "pass", "cut" or "blackhole"
        self.accepted = 0  # connections accepted, whatever became of them
        self.forwarded_bytes = 0
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None

    # --- life -----------------------------------------------------------------------

    def start(self) -> TcpProxy:
        """Listen (on `port`, or a free one) and forward until stop()."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), name="tcp-proxy",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(10) or self._server is None:
            raise RuntimeError("tcp proxy did not start")
        return self

    def stop(self) -> None:
        """Close every connection and the listener; end the thread."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults ------------------------------------------------------------------------

    def cut(self) -> None:
        """Tear down every connection; refuse (accept, then reset) new ones until resume()."""
        self._call(self._set_mode("cut"))

    def blackhole(self) -> None:
        """Keep connections up (and accept new ones) but let nothing through."""
        self._call(self._set_mode("blackhole"))

    def resume(self) -> None:
        """Pass traffic through again."""
        self._call(self._set_mode("pass"))

    @property
    def active(self) -> int:
        """Connections open through the proxy now."""
        return len(self._connections)

    # --- the loop thread -------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None, "proxy not started"
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._flowing = asyncio.Event()
        self._flowing.set()
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port))
            self.port = self._server.sockets[0].getsockname()[1]
        finally:
            ready.set()
        loop.run_forever()
        loop.close()

    async def _set_mode(self, mode: str) -> None:
        assert self._flowing is not None
        self.mode = mode
        if mode == "pass":
            self._flowing.set()
            return
        self._flowing.clear()
        if mode == "cut":
            for conn in list(self._connections):
                conn.abort()
            self._connections.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        self._connections.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.accepted += 1
        conn = _Connection(writer)
        if self.mode == "cut":
            conn.abort()
            return
        self._connections.add(conn)
        try:
            await self._flowing.wait()  # a black-holed path: accepted, nothing answers
            if conn not in self._connections:
                return  # cut meanwhile
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                conn.abort()
                return
            conn.upstream = up_writer
            if conn not in self._connections:  # cut while connecting
                conn.abort()
                return
            pumps = [asyncio.ensure_future(self._pump(reader, up_writer)),
                     asyncio.ensure_future(self._pump(up_reader, writer))]
            conn.tasks = pumps
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            conn.abort()
        except asyncio.CancelledError:
            conn.abort()
        finally:
            self._connections.discard(conn)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy bytes one way while the path is flowing; end at EOF or an error."""
        assert self._flowing is not None
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await self._flowing.wait()
                data = await source.read(CHUNK)
                if not data:
                    return
                await self._flowing.wait()  # black-holed while reading: hold it, do not drop it
                sink.write(data)
                await sink.drain()
                self.forwarded_bytes += len(data)
