"""Ed25519 signatures over canonical JSON, key ids, and the device's own key pair.

The device signs its chain heads with its own key and verifies what the service signs
(countersigned heads, rule bundles, commands) with the service's public keys only.
docs/protocol.md, "Signing", is the contract; this module is its Python side.

`canonical_json` is pure Python on purpose: it is the specification's reference, so
the reference receiver (and any service) can check a journal row's hash without
msgspec, and it encodes numbers exactly as the journal's msgspec encoder does (a
test holds the two together).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import math
import os
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gated.errors import ConfigError, SyncError

__all__ = [
    "SignatureError",
    "b64url",
    "canonical_json",
    "kid_of",
    "load_or_create_key",
    "parse_public_keys",
    "public_raw",
    "sign",
    "verify",
]

KEY_FILE_NAME = "device-ed25519.key"


def device_key_path(key_file: str, journal_path: str) -> Path:
    """Where the device key lives: `[sync] key_file`, or beside the journal by default."""
    return Path(key_file) if key_file else Path(journal_path).parent / KEY_FILE_NAME


class SignatureError(SyncError):
    """A signed object is unsigned, signed by an unknown key, or its signature is wrong.

    `reason` is the refusal code the downlink audits: "unsigned", "unknown_key" or
    "bad_signature".
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- canonical JSON -----------------------------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
            "\t": "\\t"}


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _number(value: float) -> str:
    # Shortest round-trip digits (repr's), laid out as msgspec lays them out: fixed
    # notation for 1e-5 <= |x| < 1e16 (with ".0" when integral), else d.ddde±N with no
    # "+" and no leading zeros in the exponent.
    if not math.isfinite(value):
        raise ValueError("canonical JSON has no NaN or infinity")
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits)).rstrip("0") or "0"
    if text == "0":
        return "-0.0" if sign else "0.0"
    # value = 0.d1d2d3... * 10**point
    point = len(digits) + exponent
    magnitude = abs(value)
    if 1e-5 <= magnitude < 1e16:
        if point <= 0:
            body = "0." + "0" * -point + text
        elif point >= len(text):
            body = text + "0" * (point - len(text)) + ".0"
        else:
            body = text[:point] + "." + text[point:]
    else:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        body = f"{mantissa}e{point - 1}"
    return ("-" if sign else "") + body


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for i, key in enumerate(sorted(value)):
            if not isinstance(key, str):
                raise TypeError(f"canonical JSON keys must be text, not {type(key).__name__}")
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode a {type(value).__name__} as canonical JSON")


def canonical_json(value: Any) -> bytes:
    """UTF-8 canonical JSON: sorted keys, no whitespace, shortest round-trip numbers."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")


# --- encodings and key ids ------------------------------------------------------------


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    # validate=True: stray characters are an error, not silently skipped.
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def public_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32 bytes of a public key (of a private key's public half)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def kid_of(key: bytes | Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Key id: the first 16 hex characters of SHA-256 of the raw public key."""
    raw = key if isinstance(key, bytes) else public_raw(key)
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_public_keys(encoded: Iterable[str], where: str = "sync.service_public_keys"
                      ) -> dict[str, Ed25519PublicKey]:
    """Public keys (standard base64 of the raw 32 bytes) by kid; ConfigError names the key."""
    keys: dict[str, Ed25519PublicKey] = {}
    for i, text in enumerate(encoded):
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError) as err:
            raise ConfigError(f"{where}[{i}]: not base64: {err}") from err
        if len(raw) != 32:
            raise ConfigError(f"{where}[{i}]: expected 32 bytes of Ed25519 public key, "
                              f"got {len(raw)}")
        keys[kid_of(raw)] = Ed25519PublicKey.from_public_bytes(raw)
    return keys


# --- sign and verify --------------------------------------------------------------------


def sign(obj: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of obj with `kid` and `sig` set: Ed25519 over its canonical JSON without `sig`."""
    signed = {k: v for k, v in obj.items() if k != "sig"}
    signed["kid"] = kid_of(key)
    signed["sig"] = b64url(key.sign(canonical_json(signed)))
    return signed


def verify(obj: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> str:
    """Check obj's signature under the key its `kid` names; returns the kid.

    Raises SignatureError saying why: unsigned, unknown key, malformed or wrong signature.
    """
    sig, kid = obj.get("sig"), obj.get("kid")
    if not isinstance(sig, str) or not sig:
        raise SignatureError("unsigned", "unsigned: no sig")
    if not isinstance(kid, str) or not kid:
        raise SignatureError("unsigned", "unsigned: no kid")
    key = keys.get(kid)
    if key is None:
        raise SignatureError("unknown_key", f"signed by an unknown key (kid {kid})")
    try:
        signature = _unb64url(sig)
    except (binascii.Error, ValueError) as err:
        raise SignatureError("bad_signature", "sig is not base64url") from err
    if len(signature) != 64:
        raise SignatureError("bad_signature",
                             f"sig is {len(signature)} bytes, not an Ed25519 signature")
    try:
        message = canonical_json({k: v for k, v in obj.items() if k != "sig"})
    except (TypeError, ValueError) as err:
        raise SignatureError("bad_signature",
                             f"cannot canonicalise the signed object: {err}") from err
    try:
        key.verify(signature, message)
    except InvalidSignature as err:
        raise SignatureError("bad_signature", f"bad signature (kid {kid})") from err
    return kid


# --- the device's key pair ----------------------------------------------------------------


def load_or_create_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The device's private key from `path` (PKCS#8 PEM), created 0600 on first use.

    Creation writes a temporary file with O_EXCL at mode 0600, fsyncs and renames it,
    so a crash never leaves a half-written key and a racing second start never
    overwrites the first one's key.
    """
    p = Path(path)
    if p.exists():
        return _load_key(p)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, p)  # fails if another start created it meanwhile: keep theirs
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        dir_fd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise SyncError(f"cannot create the device key {p}: {err}") from err
    return _load_key(p)


def _load_key(p: Path) -> Ed25519PrivateKey:
    try:
        mode = p.stat().st_mode & 0o777
        if mode & 0o077:  # an older or hand-made file: no one else may read a private key
            os.chmod(p, 0o600)
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise SyncError(f"cannot read the device key {p}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise SyncError(f"{p}: not an Ed25519 private key")
    return key
