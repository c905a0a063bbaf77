"""Packaging metadata: what every `pip install` of gated reads."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import gated

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_licence_is_an_spdx_string_with_a_backend_that_knows_it() -> None:
    meta = tomllib.loads(PYPROJECT.read_text())
    # A TOML table here makes setuptools >= 77 print deprecation warnings on every install.
    assert meta["project"]["license"] == "Apache-2.0"
    requires = " ".join(meta["build-system"]["requires"])
    found = re.search(r"setuptools>=(\d+)", requires)
    assert found and int(found.group(1)) >= 77, requires  # first release with PEP 639 strings


def test_version_has_one_source() -> None:
    meta = tomllib.loads(PYPROJECT.read_text())
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "gated.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", gated.__version__)
