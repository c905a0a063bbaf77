"""Rule-set downlink: signed announcements and bundles from the service, applied atomically.

The service announces its newest version for this device on `P/rules` (retained,
signed) and serves bundles at `GET /v1/devices/{device_id}/rules?since=VERSION`
(ETag / If-None-Match). A bundle is either *full* (every kind; the store ends up
exactly as the bundle) or a *delta* on the version the device has (rows upserted
by id, listed ids deleted). docs/protocol.md, "Rule bundles", is the contract.

A bundle is applied only when its signature verifies under a configured service
key, it names this tenant and device, it is newer than the active bundle (an older
signed bundle replayed is refused: no rollback), a delta's base is the active
version, and the rule store's own import checks pass. It is applied as one change
set through the same import path as `gated rules import` (injected by the
composition root as `apply`), so a bad, unsigned or half-received bundle changes
nothing. Every bundle applied or refused is audited; the active version is kept in
the downlink state file and reported in the heartbeat (`status()`).

Nothing here runs on a lane's path: verifying, hashing and fetching run in this
service's own task, the import in a worker thread, and the daemon swaps in the new
rule index as it does after any import.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gated.backoff import Backoff
from gated.errors import GatedError, SyncError
from gated.mqttlink import MqttMessage
from gated.sync.downlink_state import ActiveBundle, DownlinkState
from gated.sync.signing import SignatureError, canonical_json, verify

__all__ = [
    "ANNOUNCE_TYPE",
    "KINDS",
    "BundleRefused",
    "Fetched",
    "HttpBundleFetcher",
    "RulesSync",
]

log = logging.getLogger(__name__)

ANNOUNCE_TYPE = "io.gated.rules.announce.v1"
BUNDLE_FORMAT = "gated-rules-bundle"
MAX_ANNOUNCE_BYTES = 64 * 1024  # without an inline bundle an announcement is ~400 bytes
# The kinds of a rule set (docs/rules-format.md); a full bundle must name every one.
KINDS = ("schedules", "groups", "residents", "vehicles", "tags", "visitor_passes", "deny_list")

# apply(rules document as JSON bytes, delta?, ids to delete by kind, label) → what the
# import did: {"rules_version", "counts", "written", "deleted"}. Raises GatedError
# (RulesError with every problem) when the rule store refuses it; then nothing changed.
ApplyBundle = Callable[[bytes, bool, Mapping[str, list[str]], str], Awaitable[Mapping[str, Any]]]
Audit = Callable[..., Awaitable[Any]]
Reload = Callable[[], Awaitable[Any]]


class BundleRefused(Exception):
    """A bundle or announcement refused: a reason code and one line of detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Fetched:
    """A bundle body as the service sent it, with its ETag."""

    body: bytes
    etag: str = ""


Fetch = Callable[[int, str], Awaitable[Fetched | None]]  # (since, etag) → bundle, or None: none new


class HttpBundleFetcher:
    """GET /v1/devices/{device_id}/rules?since=V with If-None-Match, the body bounded in bytes."""

    def __init__(self, client: httpx.AsyncClient | Callable[[], httpx.AsyncClient],
                 base_url: str, device_id: str, *, max_bytes: int = 64 * 1024 * 1024) -> None:
        # A client, or a function returning the current one (the owner may re-create it).
        self._client = client if callable(client) else (lambda: client)
        self._url = f"{base_url.rstrip('/')}/v1/devices/{device_id}/rules"
        self.max_bytes = max_bytes

    async def __call__(self, since: int, etag: str) -> Fetched | None:
        """The bundle newer than `since`, or None when the service has nothing new (304/404)."""
        headers = {"Accept": "application/json"}
        if etag:
            headers["If-None-Match"] = etag
        try:
            async with self._client().stream("GET", self._url, params={"since": str(since)},
                                           headers=headers) as response:
                if response.status_code in (304, 404):
                    return None
                if response.status_code != 200:
                    raise SyncError(f"rules: GET answered {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise SyncError(f"rules: bundle of {declared} bytes is over the limit")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise SyncError(f"rules: bundle over {self.max_bytes} bytes")
                    chunks.append(chunk)
                return Fetched(b"".join(chunks), response.headers.get("etag", ""))
        except httpx.HTTPError as err:
            raise SyncError(f"rules: GET failed: {type(err).__name__}: {err}") from err


@dataclass(frozen=True, slots=True)
class _Bundle:
    version: int
    mode: str
    base_version: int | None
    issuer: str
    rules: dict[str, Any]
    delete: dict[str, list[str]]
    sha256: str


class RulesSync:
    """Keeps the device's rule set at the newest version the service signed for it."""

    def __init__(
        self,
        *,
        tenant_id: str,
        device_id: str,
        service_keys: Mapping[str, Ed25519PublicKey],
        state: DownlinkState,
        apply: ApplyBundle,
        audit: Audit,
        fetch: Fetch | None = None,
        reload: Reload | None = None,
        poll_s: float = 300.0,
        retry_min_s: float = 1.0,
        retry_max_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tenant_id = tenant_id
        self.device_id = device_id
        self._keys = service_keys
        self._state = state
        self._apply = apply
        self._audit = audit
        self._fetch = fetch
        self._reload = reload
        self.poll_s = poll_s
        self._backoff = Backoff(initial=retry_min_s, maximum=retry_max_s)
        self._clock = clock
        self.active = state.active_bundle()
        self.announced = 0  # newest version an accepted announcement named
        self.last_error: str | None = None
        self.last_check_at: float | None = None
        self._wake = asyncio.Event()
        self._pending_announce: bytes | None = None
        self._refused_digests: set[bytes] = set()  # identical refused payloads audited once
        self._lock = asyncio.Lock()

    @property
    def active_version(self) -> int:
        """The service's version of the bundle in effect (0: none applied yet)."""
        return self.active.version

    def status(self) -> dict[str, Any]:
        """What the heartbeat reports about the downlinked rule set."""
        return {
            "rules_bundle_version": self.active.version,
            "rules_bundle_sha256": self.active.sha256 or None,
            "rules_bundle_applied_at": self.active.applied_at or None,
            "rules_announced_version": self.announced or None,
            "rules_last_error": self.last_error,
        }

    # --- inputs -------------------------------------------------------------------------

    def on_mqtt(self, message: MqttMessage) -> None:
        """MqttLink handler for P/rules: keep the newest announcement, handled by run()."""
        self._pending_announce = message.payload  # only the newest matters
        self._wake.set()

    def wake(self) -> None:
        """Check with the service now (an operator asked, or the link came back)."""
        self._wake.set()

    async def run(self) -> None:
        """Handle announcements, and poll every poll_s when it can fetch, until cancelled."""
        while True:
            timeout = self.poll_s if (self._fetch is not None and self.poll_s > 0) else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            payload, self._pending_announce = self._pending_announce, None
            try:
                if payload is not None:
                    await self.take_announcement(payload)
                elif self._fetch is not None:
                    await self.sync_now()
            except SyncError as err:
                self.last_error = str(err)
                delay = self._backoff.next_delay()
                log.warning("rules sync: %s; again in %.1f s", err, delay)
                await asyncio.sleep(delay)
                self._wake.set()  # try again: the announced version is still missing
            else:
                self._backoff.reset()

    async def take_announcement(self, payload: bytes) -> dict[str, Any]:
        """Verify an announcement; fetch (or take inline) the bundle when it is newer."""
        try:
            data = self._announcement(payload)
        except BundleRefused as refusal:
            await self._refuse(refusal, "announcement", payload)
            return {"outcome": "refused", "reason": refusal.reason}
        version = int(data["version"])
        self.announced = max(self.announced, version)
        if version <= self.active.version:
            return {"outcome": "current", "version": self.active.version}
        inline = data.get("bundle")
        if isinstance(inline, dict):
            return await self.take_bundle(json.dumps(inline).encode(), via="announcement")
        return await self.sync_now()

    async def sync_now(self) -> dict[str, Any]:
        """Fetch what is newer than the active bundle and apply it; what came of it."""
        if self._fetch is None:
            return {"outcome": "unavailable", "version": self.active.version,
                    "message": "no HTTP endpoint to fetch bundles from"}
        self.last_check_at = self._clock()
        fetched = await self._fetch(self.active.version, self.active.etag)
        if fetched is None:
            self.last_error = None
            return {"outcome": "current", "version": self.active.version}
        result = await self.take_bundle(fetched.body, via="http", etag=fetched.etag)
        if result.get("reason") == "base_mismatch":
            # The service answered a delta on another version: ask for a full bundle.
            fetched = await self._fetch(0, "")
            if fetched is not None:
                result = await self.take_bundle(fetched.body, via="http", etag=fetched.etag)
        return result

    # --- one bundle ----------------------------------------------------------------------

    async def take_bundle(self, body: bytes, *, via: str, etag: str = "") -> dict[str, Any]:
        """Verify and apply one bundle, or refuse and audit it (never raises for its content)."""
        async with self._lock:  # an announcement and a command's sync_rules never interleave
            try:
                # Parsing, canonical encoding and the signature check of a large bundle take
                # CPU time: a worker thread, so the lanes on the event loop keep deciding.
                bundle = await asyncio.to_thread(self._bundle, body)
                label = f"bundle-v{bundle.version}"
                try:
                    done = await self._apply(
                        json.dumps(bundle.rules, ensure_ascii=False).encode("utf-8"),
                        bundle.mode == "delta",
                        bundle.delete,
                        label,
                    )
                except GatedError as err:
                    raise BundleRefused("invalid_rules", str(err)) from err
            except BundleRefused as refusal:
                if refusal.reason == "current":  # already in effect: nothing to do or audit
                    return {"outcome": "current", "version": self.active.version}
                await self._refuse(refusal, "bundle", body, via=via)
                return {"outcome": "refused", "reason": refusal.reason,
                        "message": str(refusal)[:500]}
            applied = ActiveBundle(
                version=bundle.version,
                etag=etag,
                sha256=bundle.sha256,
                rules_version=int(done.get("rules_version", 0)),
                applied_at=self._clock(),
            )
            await asyncio.to_thread(self._state.set_active_bundle, applied)
            log.info("rule bundle version %d applied (%s, via %s) as rule set version %s",
                     bundle.version, bundle.mode, via, done.get("rules_version"))
            if self._reload is not None:
                try:
                    await self._reload()
                except GatedError as err:  # the daemon's store watcher picks it up anyway
                    log.warning("rules sync: reload after bundle %d: %s", bundle.version, err)
            await self._audit(
                "rules_bundle_applied",
                "rules",
                resource_id=str(bundle.version),
                actor_type="remote",
                actor_id=bundle.issuer,
                new_values={
                    "bundle_version": bundle.version,
                    "mode": bundle.mode,
                    "base_version": bundle.base_version,
                    "sha256": bundle.sha256,
                    "rules_version": done.get("rules_version"),
                    "counts": done.get("counts"),
                    "written": done.get("written"),
                    "deleted": done.get("deleted"),
                },
                metadata={"via": via},
            )
            # Reported as active only once it is in the store, the index and the journal.
            self.active = applied
            self.last_error = None
            return {"outcome": "applied", "version": bundle.version,
                    "rules_version": done.get("rules_version"), "mode": bundle.mode}

    # --- checks --------------------------------------------------------------------------

    def _announcement(self, payload: bytes) -> dict[str, Any]:
        if len(payload) > MAX_ANNOUNCE_BYTES and b'"bundle"' not in payload[:MAX_ANNOUNCE_BYTES]:
            raise BundleRefused("malformed", f"announcement of {len(payload)} bytes")
        event = _json(payload)
        if (not isinstance(event, dict) or event.get("specversion") != "1.0"
                or event.get("type") != ANNOUNCE_TYPE or not isinstance(event.get("data"), dict)):
            raise BundleRefused("malformed", f"not a CloudEvents 1.0 {ANNOUNCE_TYPE}")
        data = dict(event["data"])
        inline = data.pop("bundle", None)  # signed on its own; not covered by this signature
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise BundleRefused("malformed", "data.version must be a whole number from 1")
        self._verify(data)
        self._for_me(data)
        if inline is not None:
            data["bundle"] = inline
        return data

    def _bundle(self, body: bytes) -> _Bundle:
        obj = _json(body)
        if not isinstance(obj, dict):
            raise BundleRefused("malformed", "a bundle is a JSON object")
        if obj.get("format") != BUNDLE_FORMAT or obj.get("format_version") != 1:
            raise BundleRefused("malformed", f"not a {BUNDLE_FORMAT} version 1 document")
        version = obj.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise BundleRefused("malformed", "version must be a whole number from 1")
        self._verify(obj)
        self._for_me(obj)
        mode, base = obj.get("mode"), obj.get("base_version")
        rules, delete = obj.get("rules"), obj.get("delete", {})
        if mode not in ("full", "delta"):
            raise BundleRefused("malformed", "mode must be full or delta")
        if not isinstance(rules, dict):
            raise BundleRefused("malformed", "rules must be a gated-rules JSON document")
        if not isinstance(delete, dict) or not all(
            k in KINDS and isinstance(v, list) and all(isinstance(i, str) for i in v)
            for k, v in delete.items()
        ):
            raise BundleRefused("malformed", "delete must map kinds to lists of ids")
        if version == self.active.version:
            raise BundleRefused("current", f"version {version} is already active")
        if version < self.active.version:
            raise BundleRefused("rollback", f"version {version} is older than the active "
                                            f"version {self.active.version}")
        if mode == "full":
            missing = [k for k in KINDS if k not in rules]
            if base is not None or delete:
                raise BundleRefused("malformed", "a full bundle has no base_version or delete")
            if missing:
                raise BundleRefused("malformed", f"a full bundle names every kind; missing: "
                                                 f"{', '.join(missing)}")
        else:
            if isinstance(base, bool) or not isinstance(base, int):
                raise BundleRefused("malformed", "a delta needs base_version")
            if base != self.active.version:
                raise BundleRefused("base_mismatch", f"a delta on version {base}, but version "
                                                     f"{self.active.version} is active")
            both = {k: sorted(set(delete.get(k, [])) & _ids(rules.get(k))) for k in KINDS}
            clash = {k: v for k, v in both.items() if v}
            if clash:
                raise BundleRefused("malformed", f"ids both upserted and deleted: {clash}"[:300])
        issuer = obj.get("issuer")
        return _Bundle(
            version=version,
            mode=mode,
            base_version=base,
            issuer=issuer[:200] if isinstance(issuer, str) and issuer else "service",
            rules=rules,
            delete={k: list(v) for k, v in delete.items()},
            sha256=hashlib.sha256(canonical_json(obj)).hexdigest(),
        )

    def _verify(self, obj: Mapping[str, Any]) -> None:
        try:
            verify(obj, self._keys)
        except SignatureError as err:
            raise BundleRefused(err.reason, str(err)) from err

    def _for_me(self, obj: Mapping[str, Any]) -> None:
        tenant, device = str(obj.get("tenant_id"))[:64], str(obj.get("device_id"))[:64]
        if tenant != self.tenant_id:
            raise BundleRefused("wrong_tenant", f"it is for tenant {tenant!r}")
        if device != self.device_id:
            raise BundleRefused("wrong_device", f"it is for device {device!r}")

    async def _refuse(self, refusal: BundleRefused, what: str, payload: bytes,
                      *, via: str = "mqtt") -> None:
        self.last_error = f"{what} refused: {refusal}"[:500]
        digest = hashlib.sha256(payload).digest()
        if digest in self._refused_digests:
            return  # the same retained message again after a reconnect: audited already
        if len(self._refused_digests) > 1000:
            self._refused_digests.clear()
        self._refused_digests.add(digest)
        log.warning("rules sync: %s refused: %s", what, refusal)
        claimed = _json_or_none(payload)
        version = claimed.get("version") if isinstance(claimed, dict) else None
        if isinstance(claimed, dict) and isinstance(claimed.get("data"), dict):
            version = claimed["data"].get("version")
        await self._audit(
            "rules_bundle_refused",
            "rules",
            resource_id=str(version) if isinstance(version, int) else None,
            actor_type="remote",
            status="failure",
            error_message=f"refused: {refusal}"[:2000],
            metadata={"reason": refusal.reason, "what": what, "via": via,
                      "active_version": self.active.version},
        )


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise BundleRefused("malformed", f"not JSON: {str(err)[:80]}") from err


def _json_or_none(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


def _ids(rows: Any) -> set[str]:
    if not isinstance(rows, list):
        return set()
    return {r["id"] for r in rows if isinstance(r, dict) and isinstance(r.get("id"), str)}
