"""gated central: the service many gates sync into (PostgreSQL storage, MQTT and HTTP ingest).

Installed with the `central` extra (`pip install gated[central]`); nothing on a gate imports it.
"""
