"""Local alerts: which happenings at the gate alert, and their durable delivery.

rules.py    the pure rule engine: happenings in, alert decisions out (folding, counts)
settings.py the [alerts] config section (rules and channels)
watch.py    the daemon's edge: observes the journal and the daemon's state, raises alerts
            into the journal (an `alert_raised` audit row each)
deliver.py  one worker per channel: reads raised alerts from the journal after a durable
            cursor and delivers them with retries (webhook, MQTT, Home Assistant)
state.py    the small state file beside the journal (cursors)
cli.py      `gated alert test [RULE]`

docs/alerts.md explains set-up and the delivery semantics.
"""
