"""The users file: scrypt hashes, 0640, refusals that change nothing."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from gated.web.users import UserError, UserStore, hash_password, verify_password


def test_hash_is_salted_scrypt_with_its_parameters_and_verifies() -> None:
    one, two = hash_password("correct horse"), hash_password("correct horse")
    assert one != two  # salted
    assert one.split("$")[:4] == ["scrypt", str(2**14), "8", "1"]
    assert verify_password("correct horse", one)
    assert not verify_password("correct hors", one)
    assert not verify_password("correct horse", "md5$abc")
    assert not verify_password("x", "scrypt$bad")


def test_store_writes_0640_keeps_no_password_and_refuses_bad_input(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.json")
    store.add("gus", "guard", "a-long-password")
    mode = stat.S_IMODE((tmp_path / "users.json").stat().st_mode)
    assert mode == 0o640
    assert "a-long-password" not in (tmp_path / "users.json").read_text()
    assert store.authenticate("gus", "a-long-password") is not None
    assert store.authenticate("gus", "wrong-password") is None
    assert store.authenticate("nobody", "a-long-password") is None
    before = (tmp_path / "users.json").read_bytes()
    for args in (("gus", "guard", "a-long-password"), ("x", "root", "a-long-password"),
                 ("bad name", "viewer", "a-long-password"), ("ok", "viewer", "short")):
        with pytest.raises(UserError):
            store.add(*args)
    assert (tmp_path / "users.json").read_bytes() == before
    store.set_password("gus", "another-password", "admin")
    assert store.get("gus").role == "admin"  # type: ignore[union-attr]
    store.remove("gus")
    assert json.loads((tmp_path / "users.json").read_text())["users"] == {}
