"""`gated keys`: the device key is made 0600 once and shown with its kid; service keys by kid."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.cli import main
from gated.sync.signing import kid_of, load_or_create_key, public_raw
from tests.support.signer import public_b64


def _config(tmp_path: Path, *service_keys: str) -> Path:
    path = tmp_path / "gated.toml"
    keys = ", ".join(f'"{k}"' for k in service_keys)
    path.write_text(
        '[site]\ntenant_id = "t"\nsite_id = "s"\ndevice_id = "d"\n'
        f'[journal]\npath = "{tmp_path / "state" / "journal.sqlite3"}"\n'
        f"[sync]\nservice_public_keys = [{keys}]\n")
    return path


def test_show_creates_the_device_key_once_and_prints_every_kid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    service = Ed25519PrivateKey.generate()
    config = _config(tmp_path, public_b64(service))
    assert main(["keys", "show", "--config", str(config), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    key_file = tmp_path / "state" / "device-ed25519.key"
    assert first["device"]["created"] is True and first["device"]["file"] == str(key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    device = load_or_create_key(key_file)
    assert first["device"]["kid"] == kid_of(public_raw(device))
    assert first["service_kids"] == [kid_of(public_raw(service))]
    assert main(["keys", "show", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert f"device kid:  {first['device']['kid']}" in text and "created now" not in text
    assert first["device"]["public_key"] in text


def test_show_says_when_no_service_key_is_trusted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["keys", "show", "--config", str(_config(tmp_path))]) == 0
    assert "every remote command and rule bundle is refused" in capsys.readouterr().out


def test_fingerprint_checks_a_service_key(capsys: pytest.CaptureFixture[str]) -> None:
    service = Ed25519PrivateKey.generate()
    assert main(["keys", "fingerprint", public_b64(service)]) == 0
    assert f"kid {kid_of(public_raw(service))}" in capsys.readouterr().out
    assert main(["keys", "fingerprint", "c2hvcnQ="]) == 1
    assert "expected 32 bytes" in capsys.readouterr().err
