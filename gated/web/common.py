"""HTTP rules shared by the status page and the central service's viewer.

Both front ends promise the same things to a browser: the same security headers, no
open redirect through ?next=, POSTs refused from another origin, and CSV cells that a
spreadsheet shows as text. One copy here, so a fix reaches both.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

__all__ = ["CSP", "csv_cell", "foreign_origin", "local_path", "security_headers"]

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")


def security_headers(response: web.StreamResponse, tls: bool) -> None:
    """Set the headers every page answer carries (CSP, no sniffing, no framing, no caching)."""
    h = response.headers
    h["Content-Security-Policy"] = CSP
    h["X-Content-Type-Options"] = "nosniff"
    h["Referrer-Policy"] = "same-origin"
    h["X-Frame-Options"] = "DENY"
    h.setdefault("Cache-Control", "no-store")
    if tls:
        h["Strict-Transport-Security"] = "max-age=31536000"


def foreign_origin(request: web.Request) -> bool:
    """True when a request's Origin (or Referer) names another site (CSRF's first line)."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin or origin == "null":
        return False  # old browsers and scripts send neither; the CSRF token still has to match
    host = request.headers.get("Host", "")
    stripped = re.sub(r"^[a-z]+://", "", origin).split("/", 1)[0]
    return stripped != host


def local_path(value: str | None) -> str:
    """A redirect target on this site only (no open redirect through ?next=)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if value.startswith(("/login", "/logout")):
        return "/"
    return quote(value, safe="/?&=%-._~+")


def csv_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: formula starters get a leading quote."""
    text = "" if value is None else str(value)
    if text and text[0] in "=+-@\t\r|%":
        return "'" + text
    return text
