"""`gated keys`: the device's signing key and the service keys it trusts (docs/protocol.md §11).

    gated keys show [--config FILE]     the device public key and kid (created on first use),
                                        and the kid of every [sync] service_public_keys entry
    gated keys fingerprint KEY          check a service public key and print its kid and the
                                        line to put in [sync] service_public_keys

The installer registers the device's public key with the service, and compares
the kids `show` prints with the ones the service publishes before trusting a key.
A service key is added by editing the config (the daemon reads it at start and
on SIGHUP); `fingerprint` checks the text first, so a typo never becomes a key
that silently verifies nothing.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Callable
from pathlib import Path

from gated.config import DEFAULT_CONFIG, EX_CONFIG, Config, load_config
from gated.errors import ConfigError


def _device_key_file(cfg: Config) -> Path:
    from gated.sync.signing import device_key_path

    return device_key_path(cfg.sync.key_file, cfg.journal.path)


def show(args: argparse.Namespace) -> int:
    """Print the device public key (creating the key pair 0600 if needed) and the service kids."""
    from gated.state_dirs import adopt_files, prepare_file
    from gated.sync.signing import kid_of as kid
    from gated.sync.signing import load_or_create_key, parse_public_keys, public_raw

    try:
        cfg = load_config(args.config or DEFAULT_CONFIG)
    except ConfigError as err:
        print(f"gated: invalid configuration: {err}", file=sys.stderr)
        return EX_CONFIG
    path = _device_key_file(cfg)
    created = not path.exists()
    prepare_file(path, "the device key")
    key = load_or_create_key(path)
    adopt_files([path])  # run as root: the daemon's user must still be able to read it
    raw = public_raw(key)
    services = parse_public_keys(cfg.sync.service_public_keys)
    if args.json:
        print(json.dumps({"device": {"public_key": base64.b64encode(raw).decode(),
                                     "kid": kid(raw), "file": str(path), "created": created},
                          "service_kids": sorted(services)}))
        return 0
    print(f"device key:  {base64.b64encode(raw).decode()}")
    print(f"device kid:  {kid(raw)}  ({path}{', created now' if created else ''})")
    if services:
        for service_kid in services:
            print(f"service kid: {service_kid}")
    else:
        print("service kid: none ([sync] service_public_keys is empty: every remote command "
              "and rule bundle is refused)")
    return 0


def fingerprint(args: argparse.Namespace) -> int:
    """Check one service public key; print its kid and the config line."""
    from gated.sync.signing import parse_public_keys

    try:
        [kid] = parse_public_keys([args.key], where="KEY")
    except ConfigError as err:
        print(f"gated keys: {str(err).replace('KEY[0]', 'KEY')}", file=sys.stderr)
        return 1
    print(f"kid {kid}")
    print(f'[sync] service_public_keys = ["{args.key.strip()}"]  # add to the list; then SIGHUP')
    return 0


def add_parser(sub: argparse._SubParsersAction, handler: Callable[[argparse.Namespace], int]
               ) -> None:
    """Register `gated keys …`."""
    keys = sub.add_parser("keys", help="the device signing key and the service keys")
    commands = keys.add_subparsers(dest="keys_command", required=True)
    p = commands.add_parser("show", help="device public key and kid; kids of the service keys")
    p.add_argument("--config", help=f"config file (default {DEFAULT_CONFIG})")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=handler)
    p = commands.add_parser("fingerprint", help="check a service public key and print its kid")
    p.add_argument("key", help="base64 of the raw 32-byte Ed25519 public key")
    p.set_defaults(func=handler)


def run(args: argparse.Namespace) -> int:
    """Dispatch `gated keys show|fingerprint`."""
    return show(args) if args.keys_command == "show" else fingerprint(args)
