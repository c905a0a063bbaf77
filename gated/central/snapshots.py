"""Pictures kept content-addressed by SHA-256, written once: on local disk or in an S3 bucket.

`SnapshotStore` is what ingest, the viewer and the erasure job use; `open_store` builds the
one `[snapshots] backend` names. The S3 client is a small AWS Signature V4 signer over httpx
(already a dependency): the service needs four calls (HEAD, PUT, GET, DELETE on one key),
which does not justify botocore's tens of megabytes and its import time.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import httpx

SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PREFIX = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

log = logging.getLogger("gated.central.snapshots")


class SnapshotStoreUnavailable(OSError):
    """The store cannot be reached or failed: the caller answers 503 and the device retries."""


@runtime_checkable
class SnapshotStore(Protocol):
    """Where pictures live, one object per SHA-256, deduplicated by name."""

    def put(self, sha256: str, body: bytes) -> tuple[str, bool]:
        """Keep `body` under its hash; (stored path or key, True if newly written)."""
        ...

    def get(self, relative: str) -> bytes | None:
        """The picture at a path `put` returned (None: not there, or not a store path)."""
        ...

    def remove(self, relative: str) -> bool:
        """Delete the picture at a path `put` returned; True if something was deleted."""
        ...


def _check(sha256: str, body: bytes) -> None:
    if not SHA256.match(sha256):
        raise ValueError("not a lower-case hex SHA-256")
    if hashlib.sha256(body).hexdigest() != sha256:
        raise ValueError("the body does not hash to the name")


class LocalSnapshotStore:
    """A folder of pictures named by their SHA-256 (`ab/cd/abcd…`)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, sha256: str) -> Path:
        """Where the picture with this hash lives (ValueError for a malformed hash)."""
        if not SHA256.match(sha256):
            raise ValueError("not a lower-case hex SHA-256")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def _inside(self, relative: str) -> Path | None:
        root = self.root.resolve()
        path = (root / relative).resolve()
        return path if path.is_relative_to(root) and SHA256.match(path.name) else None

    def put(self, sha256: str, body: bytes) -> tuple[str, bool]:
        """Keep `body` under its hash; (relative path, True if newly written).

        ValueError when the body does not hash to `sha256`. Written to a temporary file,
        fsynced and renamed, so a crash never leaves half a picture under a good name.
        """
        _check(sha256, body)
        path = self.path_of(sha256)
        relative = str(path.relative_to(self.root))
        if path.exists():
            return relative, False
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".in-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return relative, True

    def get(self, relative: str) -> bytes | None:
        """The picture's bytes (None: missing, or a path outside the folder)."""
        path = self._inside(relative)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def remove(self, relative: str) -> bool:
        """Delete the file; True if it was there."""
        path = self._inside(relative)
        if path is None or not path.is_file():
            return False
        path.unlink(missing_ok=True)
        return True


@dataclass(frozen=True)
class S3Credentials:
    """An access key; the secret and token never appear in a repr or a log line."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def sign_v4(method: str, url: str, headers: dict[str, str], payload_sha256: str,
            credentials: S3Credentials, region: str, now: dt.datetime,
            service: str = "s3") -> dict[str, str]:
    """`headers` plus x-amz-date, x-amz-content-sha256 and an AWS Signature V4 Authorization.

    The request has no query string (the store never needs one); the path is already
    percent-encoded as S3 expects (each byte once, `/` kept).
    """
    parsed = httpx.URL(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{now:%Y%m%d}/{region}/{service}/aws4_request"
    signed = {k.lower(): v.strip() for k, v in headers.items()}
    signed["host"] = parsed.netloc.decode("ascii")
    signed["x-amz-date"] = amz_date
    signed["x-amz-content-sha256"] = payload_sha256
    if credentials.session_token:
        signed["x-amz-security-token"] = credentials.session_token
    names = sorted(signed)
    canonical = "\n".join([
        method, parsed.raw_path.decode("ascii").split("?", 1)[0], "",
        "".join(f"{n}:{signed[n]}\n" for n in names), ";".join(names), payload_sha256])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
    key = _hmac(("AWS4" + credentials.secret_access_key).encode("utf-8"), f"{now:%Y%m%d}")
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    out = {k: v for k, v in signed.items() if k != "host"}
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key_id}/{scope}, "
                            f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return out


class S3SnapshotStore:
    """Pictures as objects `prefix/ab/abcd…` in one bucket of an S3-compatible store.

    Written once: a HEAD first (the common case of a picture already kept costs no upload),
    then a PUT with `If-None-Match: *` so two instances racing on one picture cannot both
    write it, and with `x-amz-checksum-sha256` so the store itself refuses a body damaged
    on the way. Path-style addressing (`endpoint/bucket/key`) works with every
    S3-compatible server.
    """

    def __init__(self, *, bucket: str, credentials: S3Credentials, endpoint_url: str,
                 region: str = "us-east-1", prefix: str = "snapshots",
                 timeout_s: float = 10.0) -> None:
        if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket):
            raise ValueError(f"[snapshots] bucket: {bucket!r} is not a bucket name")
        prefix = prefix.strip("/")
        if prefix and not _PREFIX.match(prefix):
            raise ValueError("[snapshots] prefix: letters, digits, . _ - and / only")
        if not endpoint_url.startswith(("http://", "https://")):
            raise ValueError("[snapshots] endpoint_url: an http:// or https:// URL")
        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        self.endpoint = endpoint_url.rstrip("/")
        self._credentials = credentials
        self._client = httpx.Client(timeout=timeout_s)
        self._key = re.compile("^" + re.escape(f"{prefix}/" if prefix else "")
                               + r"([0-9a-f]{2})/([0-9a-f]{64})$")

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def key_of(self, sha256: str) -> str:
        """The object key of a picture: prefix/ab/abcd…."""
        if not SHA256.match(sha256):
            raise ValueError("not a lower-case hex SHA-256")
        return f"{self.prefix}/{sha256[:2]}/{sha256}" if self.prefix else \
            f"{sha256[:2]}/{sha256}"

    def _valid_key(self, key: str) -> bool:
        match = self._key.match(key)
        return match is not None and match.group(2).startswith(match.group(1))

    def _request(self, method: str, key: str, body: bytes = b"",
                 headers: dict[str, str] | None = None) -> httpx.Response:
        url = f"{self.endpoint}/{quote(self.bucket)}/{quote(key, safe='/')}"
        payload = hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256
        signed = sign_v4(method, url, headers or {}, payload, self._credentials, self.region,
                         dt.datetime.now(dt.UTC))
        try:
            answer = self._client.request(method, url, content=body or None, headers=signed)
        except httpx.HTTPError as err:
            # the error names the URL (endpoint, bucket, key) and never the headers
            raise SnapshotStoreUnavailable(f"S3 {method} {key}: {type(err).__name__}: {err}"
                                           ) from None
        if answer.status_code >= 500 or answer.status_code in (401, 403):
            # 401/403: credentials wrong or expired — an operator's fix, not the device's;
            # the device keeps the picture and retries meanwhile
            raise SnapshotStoreUnavailable(f"S3 {method} {key}: HTTP {answer.status_code}")
        return answer

    def put(self, sha256: str, body: bytes) -> tuple[str, bool]:
        """Keep `body` under its hash once; (object key, True if this call wrote it)."""
        _check(sha256, body)
        key = self.key_of(sha256)
        if self._request("HEAD", key).status_code == 200:
            return key, False
        digest = base64.b64encode(bytes.fromhex(sha256)).decode("ascii")
        answer = self._request("PUT", key, body, {
            "content-type": "image/jpeg", "if-none-match": "*",
            "x-amz-checksum-sha256": digest})
        if answer.status_code == 412:  # another instance wrote it between HEAD and PUT
            return key, False
        if answer.status_code // 100 != 2:
            raise SnapshotStoreUnavailable(f"S3 PUT {key}: HTTP {answer.status_code}")
        return key, True

    def get(self, relative: str) -> bytes | None:
        """The object's bytes (None: no such object, or a key this store never writes)."""
        if not self._valid_key(relative):
            return None
        answer = self._request("GET", relative)
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            raise SnapshotStoreUnavailable(f"S3 GET {relative}: HTTP {answer.status_code}")
        return answer.content

    def remove(self, relative: str) -> bool:
        """Delete the object (S3 answers the same whether it existed, so HEAD first)."""
        if not self._valid_key(relative):
            return False
        if self._request("HEAD", relative).status_code != 200:
            return False
        answer = self._request("DELETE", relative)
        if answer.status_code // 100 != 2:
            raise SnapshotStoreUnavailable(f"S3 DELETE {relative}: HTTP {answer.status_code}")
        return True


def load_credentials(credentials_file: str) -> S3Credentials:
    """The access key from a TOML file (access_key_id, secret_access_key[, session_token])
    or, with no file named, from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN.
    """
    if credentials_file:
        try:
            raw = tomllib.loads(Path(credentials_file).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as err:
            # the parse error may quote a line of the file: say only which file and what kind
            raise ValueError(f"[snapshots] credentials_file {credentials_file}: "
                             f"{type(err).__name__}") from None
        key, secret = raw.get("access_key_id"), raw.get("secret_access_key")
        token = raw.get("session_token")
    else:
        key = os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        token = os.environ.get("AWS_SESSION_TOKEN")
    if not isinstance(key, str) or not key or not isinstance(secret, str) or not secret:
        raise ValueError("[snapshots] S3 needs access_key_id and secret_access_key (in "
                         "credentials_file, or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    return S3Credentials(key, secret, token if isinstance(token, str) and token else None)


def open_store(settings: dict[str, object], default_path: str) -> SnapshotStore:
    """The store `[snapshots]` names: backend "local" (path) or "s3" (bucket, prefix,
    endpoint_url, region, credentials_file); ValueError names the key that is wrong."""
    backend = settings.get("backend", "local")
    if backend == "local":
        return LocalSnapshotStore(str(settings.get("path", default_path)))
    if backend != "s3":
        raise ValueError(f"[snapshots] backend: 'local' or 's3', not {backend!r}")
    return S3SnapshotStore(
        bucket=str(settings.get("bucket", "")),
        credentials=load_credentials(str(settings.get("credentials_file", ""))),
        endpoint_url=str(settings.get("endpoint_url", "")),
        region=str(settings.get("region", "us-east-1")),
        prefix=str(settings.get("prefix", "snapshots")))


def configured_store(config: Any) -> SnapshotStore:
    """The store a loaded central.toml configures; ConfigError when `[snapshots]` is wrong."""
    from gated.errors import ConfigError

    try:
        return open_store(config.snapshots, config.snapshots_path)
    except ValueError as err:
        raise ConfigError(str(err)) from None
