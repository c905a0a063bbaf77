"""`gated ctl`: talk to the running daemon over its control socket.

A thin client: it sends one request line, prints the daemon's answer, and exits
0 when the action was carried out, 1 when the daemon refused or failed it (the
one-line reason goes to stderr), 69 when no daemon answers on the socket.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["EX_UNAVAILABLE", "add_parser", "request", "run"]

EX_UNAVAILABLE = 69  # sysexits: the daemon is not there
DEFAULT_SOCKET = "/run/gated/control.sock"
TIMEOUT_S = 30.0  # an open waits for its journal row; a relay test for its pulse


def request(path: str, message: dict[str, Any], timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Send one request to the daemon's socket and return its answer; raises OSError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(path)
        sock.sendall(json.dumps(message).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    if not buf:
        raise OSError("the daemon closed the connection without answering")
    answer = json.loads(buf)
    if not isinstance(answer, dict):
        raise OSError("the daemon's answer is not a JSON object")
    return answer


def add_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    """Add `gated ctl …` (handled by `func`) to the top-level subparsers."""
    ctl = sub.add_parser("ctl", help="control the running daemon (open, hold, lockdown, status)")
    ctl.set_defaults(func=func)
    ctl.add_argument("--socket", default=None,
                     help=f"control socket (default: [control] socket of --config, "
                          f"else {DEFAULT_SOCKET})")
    ctl.add_argument("--config", default=None, help="config file naming the socket")
    ctl.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    acts = ctl.add_subparsers(dest="ctl_action", required=True, metavar="ACTION")
    acts.add_parser("status", help="lanes, modes, gate states, alarms, hardware health")
    for name, text in (("open", "open a lane's gate once"),
                       ("hold", "hold a lane's gate open"),
                       ("release", "end a hold-open")):
        p = acts.add_parser(name, help=text)
        p.add_argument("lane")
        p.add_argument("--reason", default=None)
    p = acts.add_parser("lockdown", help="lockdown on or off, for one lane or all")
    p.add_argument("state", choices=["on", "off"])
    p.add_argument("lane", nargs="?", default=None)
    p.add_argument("--reason", default=None)
    p = acts.add_parser("relay-test", help="pulse a lane's relay (does the board click?)")
    p.add_argument("lane")
    p.add_argument("--ms", type=int, default=300)
    p.add_argument("--reason", default=None)
    p = acts.add_parser("reload-rules", help="load the newest rule-set version now")
    p.add_argument("--reason", default=None)


def _message(args: argparse.Namespace) -> dict[str, Any]:
    action = args.ctl_action
    msg: dict[str, Any] = {"action": action.replace("-", "_")}
    if action == "lockdown":
        msg["on"] = args.state == "on"
    if getattr(args, "lane", None) is not None:
        msg["lane"] = args.lane
    if action == "relay-test":
        msg["ms"] = args.ms
    if getattr(args, "reason", None):
        msg["reason"] = args.reason
    return msg


def socket_path(args: argparse.Namespace) -> str:
    """The socket to use: --socket, else the config's [control] socket, else the default."""
    if args.socket:
        return str(args.socket)
    if args.config:
        from gated.config import load_config

        return load_config(args.config).control.socket
    return DEFAULT_SOCKET


def run(args: argparse.Namespace) -> int:
    """Carry out one `gated ctl` invocation; returns the exit status."""
    path = socket_path(args)
    try:
        answer = request(path, _message(args))
    except (OSError, ValueError) as err:
        print(f"gated ctl: no daemon answering on {path}: {err}", file=sys.stderr)
        return EX_UNAVAILABLE
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    elif args.ctl_action == "status" and answer.get("ok"):
        _print_status(answer.get("data") or {})
    elif answer.get("ok"):
        print(answer.get("message", "ok"))
    if not answer.get("ok"):
        print(f"gated ctl: {answer.get('outcome', 'refused')}: {answer.get('message', '')}",
              file=sys.stderr)
        return 1
    return 0


def _print_status(data: dict[str, Any]) -> None:
    for lane_id, lane in sorted((data.get("lanes") or {}).items()):
        alarms = ", ".join(lane.get("alarms") or []) or "no alarms"
        relay = lane.get("relay_fault") or "ok"
        print(f"{lane_id}: mode {lane.get('mode')}, gate {lane.get('gate')}, {alarms}, "
              f"relay {relay}, reads {lane.get('reads', 0)}")
    health = data.get("health") or {}
    if health:
        print(f"health: {health.get('summary', '')}")
    journal = data.get("journal") or {}
    if journal:
        print(f"journal: head seq {journal.get('head_seq')}")
