"""Everything that talks upstream (MQTT, HTTP).

Imports only gated.model, gated.config, gated.errors and its own modules.
"""
