"""Everything that touches a pin, a port or a camera.

Imports only gated.model, gated.config, gated.errors and its own modules.
"""
