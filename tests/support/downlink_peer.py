"""The service's downlink on the reference receiver: signed commands and rule bundles.

Hooks into `tests.support.receiver.Receiver` through its public extension points
(`routes`, `on_message`, `publish`), so the receiver stays the one service the
tests run: `DownlinkPeer(receiver)` must be made before `receiver.start()`.

- `command(...)` signs a command with the receiver's service key (the reference
  signer, tools/sign_command.py) and `send(...)` publishes it on `P/commands`;
- `results` collects `io.gated.command.result.v1` messages, each schema-checked;
- `add_bundle(...)` signs a rule bundle and serves it at
  `GET /v1/devices/{device_id}/rules?since=V` (ETag, If-None-Match, 304), and
  `announce(...)` publishes the retained signed announcement on `P/rules`.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from aiohttp import web

from tests.support.receiver import Receiver
from tests.support.schemas import validate, validate_event
from tests.support.signer import tool


class DownlinkPeer:
    """Commands and rule bundles from the reference receiver's service key."""

    def __init__(self, receiver: Receiver, tenant: str) -> None:
        self.receiver = receiver
        self.tenant = tenant
        self.key = receiver.service_key
        self.lock = threading.Lock()
        self.results: list[dict[str, Any]] = []
        self.invalid: list[str] = []
        self.bundles: dict[str, list[dict[str, Any]]] = {}  # device → bundles, as published
        self.rules_requests: list[tuple[int, str]] = []  # (since, If-None-Match)
        self.rules_answer: tuple[int, bytes] | None = None  # force one (status, body) answer
        receiver.on_message.append(self._on_message)
        receiver.routes.append(("GET", "/v1/devices/{device_id}/rules", self._get_rules))

    # --- commands ------------------------------------------------------------------------

    def command(self, device: str, action: str = "open", **kwargs: Any) -> dict[str, Any]:
        """A command signed with the service key."""
        kwargs.setdefault("issuer", "ops:ann@example.com")
        kwargs.setdefault("lane", "main-in" if action in ("open", "hold", "release") else None)
        return tool.command(kwargs.pop("key", self.key), tenant=kwargs.pop("tenant", self.tenant),
                            device=device, action=action, **kwargs)

    def send(self, device: str, event: dict[str, Any] | bytes, *, retain: bool = False,
             check_schema: bool = True) -> None:
        """Publish a command (validated first unless it is meant to be bad) on P/commands."""
        if isinstance(event, dict) and check_schema:
            validate_event(event)
        payload = json.dumps(event).encode() if isinstance(event, dict) else event
        self.receiver.publish(f"gated/v1/{self.tenant}/{device}/commands", payload,
                              retain=retain)

    def result_for(self, command_id: str) -> dict[str, Any] | None:
        """The result the device published for a command, if any yet."""
        with self.lock:
            for event in self.results:
                if event["data"]["command_id"] == command_id:
                    return event
        return None

    def _on_message(self, topic: str, payload: bytes, _retained: bool) -> None:
        if not topic.endswith("/commands/result"):
            return
        try:
            event = validate_event(json.loads(payload))
        except Exception as err:
            with self.lock:
                self.invalid.append(f"{topic}: {str(err)[:300]}")
            return
        with self.lock:
            self.results.append(event)

    # --- rule bundles ---------------------------------------------------------------------

    def add_bundle(self, device: str, version: int, rules: dict[str, Any], *,
                   base_version: int | None = None, delete: dict[str, list[str]] | None = None,
                   **kwargs: Any) -> dict[str, Any]:
        """Sign a bundle (full, or a delta on base_version) and serve it from now on."""
        bundle = tool.bundle(kwargs.pop("key", self.key), tenant=kwargs.pop("tenant", self.tenant),
                             device=kwargs.pop("for_device", device), version=version,
                             rules=rules, base_version=base_version, delete=delete,
                             issuer="ops:rules@example.com")
        bundle.update(kwargs)  # changed after signing, when a test wants a tampered one
        if "tampered" not in kwargs:
            validate("rules_bundle", bundle)
        with self.lock:
            self.bundles.setdefault(device, []).append(bundle)
        return bundle

    def announce(self, device: str, version: int, *, inline: dict[str, Any] | None = None,
                 key: Any = None, tenant: str | None = None, retain: bool = True) -> None:
        """Publish the signed announcement of `version` on P/rules (retained)."""
        event = tool.announce(key or self.key, tenant=tenant or self.tenant, device=device,
                              version=version, inline=inline)
        validate_event(event)
        self.receiver.publish(f"gated/v1/{self.tenant}/{device}/rules", json.dumps(event),
                              retain=retain)

    async def _get_rules(self, request: web.Request) -> web.StreamResponse:
        device = request.match_info["device_id"]
        since = int(request.query.get("since", "0"))
        etag_in = request.headers.get("If-None-Match", "")
        with self.lock:
            self.rules_requests.append((since, etag_in))
            forced, self.rules_answer = self.rules_answer, None
            bundles = list(self.bundles.get(device, []))
        if forced is not None:
            return web.Response(status=forced[0], body=forced[1])
        # The newest bundle the device can take: a delta on exactly its version, or a full one.
        usable = [b for b in bundles if b["version"] > since
                  and (b["mode"] == "full" or b["base_version"] == since)]
        if not usable:
            return web.Response(status=304)
        bundle = max(usable, key=lambda b: b["version"])
        etag = f'"v{bundle["version"]}-{bundle["mode"]}"'
        if etag_in == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=json.dumps(bundle).encode(), content_type="application/json",
                            headers={"ETag": etag})
