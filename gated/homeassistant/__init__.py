"""Home Assistant: MQTT discovery, entity states and commands (docs/home-assistant.md).

Imported by the daemon only when [home_assistant] enabled = true: paho and the
bridge stay out of memory otherwise.
"""
