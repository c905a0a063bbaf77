"""The status page over TLS: HTTPS only, Secure session cookie, HSTS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.web.support import PASSWORDS, make_site, serving

pytestmark = pytest.mark.slow


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as an installer would make with openssl."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gate.local")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "web.crt", folder / "web.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_over_tls_the_cookie_is_secure_and_plain_http_gets_nothing(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    site = make_site(tmp_path, web_extra=f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    site.scheme = "https"
    site_base = site.base
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        with serving(site):
            client = httpx.Client(base_url=site_base, verify=trust, timeout=20)
            answer = client.post("/login", data={"user": "gus", "password": PASSWORDS["gus"]})
            assert answer.status_code == 303
            cookie = answer.headers["set-cookie"].lower()
            assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
            page = client.get("/")
            assert page.status_code == 200
            assert page.headers["Strict-Transport-Security"].startswith("max-age=")
            with pytest.raises(httpx.HTTPError):
                httpx.get(site_base.replace("https://", "http://") + "/healthz", timeout=5)
    finally:
        site.relay.close()
