"""Suite-wide test settings."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# Tests assert behaviour, never timings: on a loaded CI machine a slow example is
# not a failure, so hypothesis' per-example deadline and too-slow check are off.
settings.register_profile(
    "gated",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("gated")
