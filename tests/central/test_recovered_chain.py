"""A gate whose journal was found corrupt continues its chain from the old head: witnessed."""

from __future__ import annotations

from typing import Any

import psycopg

from gated.central.admin import enrol_device
from gated.central.store import Store
from tests.support.device_sim import SimDevice
from tests.support.postgres import PgServer


def test_a_restart_anchored_on_the_held_head_links_and_is_countersigned(
        store: Store, owner: psycopg.Connection[Any], pg_server: PgServer, pg_db: str) -> None:
    sim = SimDevice("acme", "hq", "gate-1")
    enrol_device(owner, "acme", "gate-1", "hq", sim.public_b64)
    synced = [sim.event(), sim.event("audit"), sim.event()]
    assert store.ingest("acme", "gate-1", synced, [sim.signed_head()]).head[
        "head_status"] == "countersigned"
    old_head = (sim.seq, sim.head)
    # the fresh journal's first row, as gated.app records it and Writer.continue_from chains
    # it: the next seq, prev_hash the old head, the anchor in its metadata
    restart = sim.event("audit", action="journal_recovered", resource_type="journal",
                        resource_id=None, actor_type="system", actor_id="gated",
                        ip_address=None, ip_address_digest=None, new_values=None,
                        status="failure", error_message="database disk image is malformed",
                        metadata={"moved_to": "/var/lib/gated/journal.db.corrupt-1",
                                  "old_head_seq": old_head[0], "old_head_hash": old_head[1],
                                  "journal.pruned_through_seq": old_head[0],
                                  "journal.pruned_through_hash": old_head[1]})
    assert restart["data"]["seq"] == old_head[0] + 1
    assert restart["data"]["prev_hash"] == old_head[1]
    after = [restart, sim.event(), sim.event()]
    outcome = store.ingest("acme", "gate-1", after, [sim.signed_head()])
    assert outcome.alerts == [] and outcome.head["head_status"] == "countersigned"
    with pg_server.connect(pg_db) as conn:
        assert conn.execute("SELECT chain_seq, forked FROM devices").fetchone() == (6, False)
        assert conn.execute("SELECT count(*) FROM audit_logs WHERE origin = 'service'"
                            ).fetchone() == (0,)
