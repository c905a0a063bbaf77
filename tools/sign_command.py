#!/usr/bin/env python3
"""Reference signer for what the central service sends a gated device (docs/protocol.md, Downlink).

Stand-alone on purpose: it needs Python 3.11 and the `cryptography` package, not
gated, so a service implementer can read it as the specification in code and an
installer can use it on any machine that holds the service key.

    sign_command.py keygen --out service.key         # private key (0600); prints the public key
    sign_command.py pubkey --key service.key         # the public key and its kid
    sign_command.py command --key service.key --tenant T --device D --action open \
        --lane main-in --issuer ops:ann [--reason TEXT] [--ttl 60]
    sign_command.py bundle --key service.key --tenant T --device D --version 7 \
        --rules rules.json [--base 6 --delete vehicles=v-1,v-2] [--issuer ops:ann]
    sign_command.py announce --key service.key --tenant T --device D --version 7 [--inline BUNDLE]

Each prints one JSON document on stdout: a command is a CloudEvent to publish
on `gated/v1/{tenant}/{device}/commands`; a bundle is the body of
`GET /v1/devices/{device}/rules`; an announcement is the CloudEvent to publish,
retained, on `gated/v1/{tenant}/{device}/rules`.

Signing: Ed25519 over the canonical JSON of the signed object without its `sig`
(UTF-8, keys sorted, separators "," and ":", no whitespace, non-ASCII as is);
`sig` is the unpadded base64url signature; `kid` the first 16 hex characters of
SHA-256 over the raw 32-byte public key.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import math
import os
import secrets
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KINDS = ("schedules", "groups", "residents", "vehicles", "tags", "visitor_passes", "deny_list")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
            "\r": "\\r", "\t": "\\t"}


def _string(text: str) -> str:
    return '"' + "".join(
        _ESCAPES.get(ch) or (f"\\u{ord(ch):04x}" if ch < " " else ch) for ch in text
    ) + '"'


def _number(value: float) -> str:
    # Shortest round-trip digits; fixed notation for 1e-5 <= |x| < 1e16 (".0" when
    # integral), else d.ddde-N / deN: no "+", no leading zeros in the exponent.
    if not math.isfinite(value):
        raise ValueError("canonical JSON has no NaN or infinity")
    sign_, digits, exponent = Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    if text == "0":
        return "-0.0" if sign_ else "0.0"
    point = len(digits) + int(exponent)
    if 1e-5 <= abs(value) < 1e16:
        if point <= 0:
            body = "0." + "0" * -point + text
        elif point >= len(text):
            body = text + "0" * (point - len(text)) + ".0"
        else:
            body = text[:point] + "." + text[point:]
    else:
        body = text[0] + ("." + text[1:] if len(text) > 1 else "") + f"e{point - 1}"
    return ("-" if sign_ else "") + body


def _encode(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_string(k)}:{_encode(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    raise TypeError(f"cannot encode a {type(value).__name__} as canonical JSON")


def canonical(obj: Any) -> bytes:
    """The bytes that are signed (docs/protocol.md, "Signing"): sorted keys, no whitespace."""
    return _encode(obj).encode("utf-8")


def b64url(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_public(key: Ed25519PrivateKey) -> bytes:
    """The raw 32 bytes of the key's public half."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def kid_of(public_raw: bytes) -> str:
    """Key id: the first 16 hex characters of SHA-256 over the raw public key."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def sign(obj: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of `obj` with `kid` set and `sig` over everything else."""
    signed = {k: v for k, v in obj.items() if k != "sig"}
    signed["kid"] = kid_of(raw_public(key))
    signed["sig"] = b64url(key.sign(canonical(signed)))
    return signed


def load_key(path: str | Path) -> Ed25519PrivateKey:
    """A private key from a PEM (PKCS#8) file or a file of 32 raw bytes."""
    data = Path(path).read_bytes()
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit(f"{path}: not an Ed25519 private key")
    return key


def rfc3339(ts: float) -> str:
    """UTC time as RFC 3339 with milliseconds and Z."""
    moment = dt.datetime.fromtimestamp(ts, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def command(
    key: Ed25519PrivateKey, *, tenant: str, device: str, action: str, issuer: str,
    lane: str | None = None, reason: str | None = None, ttl_s: float = 60.0,
    now: float | None = None, command_id: str | None = None, nonce: str | None = None,
) -> dict[str, Any]:
    """A signed command as the CloudEvent the device takes."""
    now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    args: dict[str, Any] = {}
    if lane is not None:
        args["lane"] = lane
    if reason is not None:
        args["reason"] = reason
    command_id = command_id or str(uuid.uuid4())
    data = sign(
        {
            "command_id": command_id,
            "tenant_id": tenant,
            "device_id": device,
            "action": action,
            "args": args,
            "issuer": issuer,
            "issued_at": rfc3339(now),
            "expires_at": rfc3339(now + ttl_s),
            "nonce": nonce or b64url(secrets.token_bytes(16)),
        },
        key,
    )
    return {
        "specversion": "1.0",
        "id": command_id,
        "source": f"gated-service://{tenant}",
        "type": "io.gated.command.v1",
        "time": data["issued_at"],
        "datacontenttype": "application/json",
        "data": data,
    }


def bundle(
    key: Ed25519PrivateKey, *, tenant: str, device: str, version: int, rules: dict[str, Any],
    base_version: int | None = None, delete: dict[str, list[str]] | None = None,
    issuer: str = "service", now: float | None = None,
) -> dict[str, Any]:
    """A signed rule bundle: full (every kind, replaces) or a delta on `base_version`."""
    now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    doc = {"format": "gated-rules", "format_version": 1}
    doc.update({k: v for k, v in rules.items() if k in KINDS})
    if base_version is None:
        for kind in KINDS:
            doc.setdefault(kind, [])  # a full bundle names every kind: absent would mean "keep"
    return sign(
        {
            "format": "gated-rules-bundle",
            "format_version": 1,
            "tenant_id": tenant,
            "device_id": device,
            "version": version,
            "mode": "full" if base_version is None else "delta",
            "base_version": base_version,
            "issued_at": rfc3339(now),
            "issuer": issuer,
            "rules": doc,
            "delete": delete or {},
        },
        key,
    )


def announce(
    key: Ed25519PrivateKey, *, tenant: str, device: str, version: int,
    inline: dict[str, Any] | None = None, now: float | None = None,
) -> dict[str, Any]:
    """A signed announcement of the newest rule-set version (optionally carrying the bundle)."""
    now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    fields: dict[str, Any] = {
        "tenant_id": tenant,
        "device_id": device,
        "version": version,
        "issued_at": rfc3339(now),
    }
    data = sign(fields, key)
    if inline is not None:
        data["bundle"] = inline  # signed on its own; the announcement's sig does not cover it
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": f"gated-service://{tenant}",
        "type": "io.gated.rules.announce.v1",
        "time": fields["issued_at"],
        "datacontenttype": "application/json",
        "data": data,
    }


def _deletes(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        kind, _, ids = item.partition("=")
        if kind not in KINDS or not ids:
            raise SystemExit(f"--delete {item!r}: want KIND=ID[,ID…], KIND one of "
                             f"{', '.join(KINDS)}")
        out.setdefault(kind, []).extend(i for i in ids.split(",") if i)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="sign_command.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("keygen", help="make a service key pair")
    p.add_argument("--out", required=True, help="private key file to create (PEM, mode 0600)")
    p = sub.add_parser("pubkey", help="print the public key and kid of a private key")
    p.add_argument("--key", required=True)
    for name in ("command", "bundle", "announce"):
        p = sub.add_parser(name)
        p.add_argument("--key", required=True, help="the service's private key file")
        p.add_argument("--tenant", required=True)
        p.add_argument("--device", required=True)
        if name == "command":
            p.add_argument("--action", required=True)
            p.add_argument("--lane")
            p.add_argument("--reason")
            p.add_argument("--issuer", required=True, help="who asked, e.g. ops:ann@example.com")
            p.add_argument("--ttl", type=float, default=60.0, help="seconds until it expires")
        else:
            p.add_argument("--version", type=int, required=True)
        if name == "bundle":
            p.add_argument("--rules", required=True, help="a gated-rules JSON document")
            p.add_argument("--base", type=int, help="make a delta on this version")
            p.add_argument("--delete", action="append", default=[], metavar="KIND=ID,…")
            p.add_argument("--issuer", default="service")
        if name == "announce":
            p.add_argument("--inline", help="a bundle file to carry in the announcement")
    args = parser.parse_args(argv)

    if args.what == "keygen":
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        args.key = args.out
    if args.what in ("keygen", "pubkey"):
        raw = raw_public(load_key(args.key))
        public = base64.b64encode(raw).decode("ascii")
        print(json.dumps({"public_key": public, "kid": kid_of(raw)}))
        return 0
    key = load_key(args.key)
    if args.what == "command":
        out = command(key, tenant=args.tenant, device=args.device, action=args.action,
                      issuer=args.issuer, lane=args.lane, reason=args.reason, ttl_s=args.ttl)
    elif args.what == "bundle":
        rules = json.loads(Path(args.rules).read_text(encoding="utf-8"))
        out = bundle(key, tenant=args.tenant, device=args.device, version=args.version,
                     rules=rules, base_version=args.base, delete=_deletes(args.delete),
                     issuer=args.issuer)
    else:
        inline = json.loads(Path(args.inline).read_text(encoding="utf-8")) if args.inline else None
        out = announce(key, tenant=args.tenant, device=args.device, version=args.version,
                       inline=inline)
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
