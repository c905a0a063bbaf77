"""The central service's config file (central.toml; docs/central.md lists every key)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gated.errors import ConfigError

SNAPSHOT_KEYS = {"backend", "path", "bucket", "prefix", "endpoint_url", "region",
                 "credentials_file"}


@dataclass
class CentralConfig:
    """Everything `gated central run` needs."""

    database_url: str = ""  # the service role's connection (libpq string or URL)
    owner_url: str = ""  # the owner role's, for migrate / enrol / retention
    prepared_statements: bool = True  # false behind a pooler that cannot track them
    key_file: str = "service-ed25519.key"
    instance: str = "central-1"
    mqtt_enabled: bool = True
    mqtt: dict[str, Any] = field(default_factory=dict)
    http_enabled: bool = True
    http_listen: str = "127.0.0.1"
    http_port: int = 8080
    snapshots_path: str = "snapshots"
    # the whole [snapshots] table: backend "local" (path) or "s3" (gated.central.snapshots)
    snapshots: dict[str, Any] = field(default_factory=dict)
    retention_months: int = 13


def load(path: str | Path) -> CentralConfig:
    """Read and check a central.toml; ConfigError names the key that is wrong."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: {err}") from err
    db = raw.get("database", {})
    service = raw.get("service", {})
    http = raw.get("http", {})
    mqtt = dict(raw.get("mqtt", {}))
    config = CentralConfig(
        database_url=str(db.get("url", "")), owner_url=str(db.get("owner_url", "")),
        prepared_statements=bool(db.get("prepared_statements", True)),
        key_file=str(service.get("key_file", "service-ed25519.key")),
        instance=str(service.get("instance", "central-1")),
        mqtt_enabled=bool(mqtt.pop("enabled", True)), mqtt=mqtt,
        http_enabled=bool(http.get("enabled", True)),
        http_listen=str(http.get("listen", "127.0.0.1")), http_port=int(http.get("port", 8080)),
        snapshots_path=str(raw.get("snapshots", {}).get("path", "snapshots")),
        retention_months=int(raw.get("retention", {}).get("months", 13)),
        snapshots=dict(raw.get("snapshots", {})),
    )
    unknown_snapshots = set(config.snapshots) - SNAPSHOT_KEYS
    if unknown_snapshots:
        raise ConfigError(f"{path}: [snapshots] unknown keys {sorted(unknown_snapshots)}")
    if config.snapshots.get("backend", "local") not in ("local", "s3"):
        raise ConfigError(f"{path}: [snapshots] backend: 'local' or 's3'")
    if not config.database_url:
        raise ConfigError(f"{path}: [database] url is required")
    known = {"host", "port", "username", "password", "client_id", "group", "session_expiry_s",
             "keepalive_s", "batch_max", "batch_wait_s", "batch_max_bytes", "queue_max_bytes",
             "workers",
             "tls_ca_file"}
    unknown = set(mqtt) - known
    if unknown:
        raise ConfigError(f"{path}: [mqtt] unknown keys {sorted(unknown)}")
    return config
