"""The daemon's local control socket: line-delimited JSON over a Unix socket.

`gated ctl` and any other local tool talk to the running daemon here. Each
request is one JSON object on one line, each answer one JSON object on one
line (protocol in docs/control-socket.md):

    → {"action": "open", "lane": "main-in", "reason": "delivery", "id": "42"}
    ← {"id": "42", "ok": true, "outcome": "success", "message": "main-in opened", "data": {…}}

Who may connect is decided by the file system (the socket is mode 0660, owned
by the daemon's user and the configured group); who *did* connect is asked of
the kernel (SO_PEERCRED), never of the client, and recorded as the actor of
every action. Bad input — non-JSON, oversized lines, unknown actions, wrong
types — gets a one-line refusal and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any

from gated import unix_user
from gated.control import Actor, ActorType, ControlPlane, Outcome, Result
from gated.errors import ConfigError

__all__ = ["MAX_LINE", "ControlSocket", "peer_actor"]

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024  # a request is a few hundred bytes
IDLE_TIMEOUT_S = 60.0  # a connection that says nothing for this long is closed
MAX_CONNECTIONS = 16
SOCKET_MODE = 0o660  # the daemon's user and the configured group


def peer_actor(sock: socket.socket | None, request_id: str | None = None) -> Actor:
    """The connecting process's Unix user, from the kernel (SO_PEERCRED)."""
    uid = gid = pid = -1
    if sock is not None and hasattr(socket, "SO_PEERCRED"):
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
    return Actor(
        ActorType.LOCAL_USER,
        id=unix_user.name_of(uid),
        role="root" if uid == 0 else None,
        address=f"uid={uid} gid={gid} pid={pid}",
        request_id=request_id,
    )


class ControlSocket:
    """Serves the control plane on a Unix socket until cancelled."""

    def __init__(self, control: ControlPlane, path: str, *, group: str = "") -> None:
        self.name = "control-socket"
        self.control = control
        self.path = Path(path)
        self.group = group
        self._connections = 0

    async def run(self) -> None:
        """Bind the socket (replacing a stale one) and serve until cancelled."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()  # left by a daemon that was killed
        server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                 limit=MAX_LINE)
        try:
            os.chmod(self.path, SOCKET_MODE)
            if self.group:
                try:
                    gid = grp.getgrnam(self.group).gr_gid
                except KeyError as err:
                    raise ConfigError(f"control.socket_group: no group {self.group!r}") from err
                os.chown(self.path, -1, gid)
            log.info("control socket listening on %s", self.path)
            async with server:
                await server.serve_forever()
        finally:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= MAX_CONNECTIONS:
            await _send(writer, {"ok": False, "outcome": "refused",
                                 "message": "too many control connections"})
            writer.close()
            return
        self._connections += 1
        sock = writer.get_extra_info("socket")
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT_S)
                except (TimeoutError, ConnectionError):
                    return
                except (ValueError, asyncio.LimitOverrunError):
                    await _send(writer, _refusal(None, f"request longer than {MAX_LINE} bytes"))
                    return
                if not line:
                    return
                answer = await self._answer(line, sock)
                await _send(writer, answer)
        except ConnectionError:
            pass
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, line: bytes, sock: Any) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return _refusal(None, f"not a JSON object: {err}")
        if not isinstance(request, dict):
            return _refusal(None, "not a JSON object")
        request_id = request.pop("id", None)
        if request_id is not None and not isinstance(request_id, str | int):
            return _refusal(None, "id must be a string or a number")
        rid = None if request_id is None else str(request_id)[:64]
        action = request.pop("action", None)
        if not isinstance(action, str):
            return _refusal(rid, "missing action")
        if action == "status":
            return {"id": rid, "ok": True, "outcome": "success", "message": "status",
                    "data": await self.control.status()}
        actor = peer_actor(sock, rid)
        if action == "lockdown":
            on = request.pop("on", None)
            if not isinstance(on, bool):
                return _refusal(rid, "lockdown needs \"on\": true or false")
            action = "lockdown_on" if on else "lockdown_off"
        result = await self.control.perform(action, actor, request)
        return _answer(rid, result)


def _answer(rid: str | None, result: Result) -> dict[str, Any]:
    return {"id": rid, "ok": result.ok, "outcome": result.outcome.value,
            "message": result.message, "data": dict(result.data)}


def _refusal(rid: str | None, message: str) -> dict[str, Any]:
    return {"id": rid, "ok": False, "outcome": Outcome.REFUSED.value, "message": message}


async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj, default=str, separators=(",", ":")).encode() + b"\n")
    await writer.drain()
