"""Reusable helpers for gated's integration tests (real services on loopback)."""
