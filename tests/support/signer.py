"""The reference signer (tools/sign_command.py) for tests: the service's side of signing."""

from __future__ import annotations

import base64
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

TOOL = Path(__file__).resolve().parents[2] / "tools" / "sign_command.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sign_command", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("sign_command", module)
    spec.loader.exec_module(module)
    return module


tool = _load()


def public_b64(key: Ed25519PrivateKey) -> str:
    """The key's public half as `service_public_keys` takes it (base64 of the raw 32 bytes)."""
    return base64.b64encode(tool.raw_public(key)).decode("ascii")
