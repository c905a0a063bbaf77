"""The local status page: login, live gate view, guard actions, events, audit, replay.

Served from the daemon's own event loop (`gated.web.server.WebServer`, started by
app.py beside the control socket). It acts on the gate only through
`gated.control.ControlPlane` and reads only through the journal's read API and its
commit feed; what else it needs (visitor passes, the rule index for replay, metrics)
is handed to it by app.py as callables. Design and operation: docs/status-page.md.
"""
