"""The rule set: who may enter where and when (residents, groups, schedules, vehicles,
tags, visitor passes, the deny list), from storage to the index a decision reads.

`entities` defines the values and the RuleSource read interface; `store` keeps them in
their own versioned SQLite file, `memory` in dicts (tests, benchmarks); `files` imports
and exports CSV/JSON; `index` builds the in-memory plate index (`RuleIndex`) the policy
decides from; `cli` and `passes` are `gated rules` and `gated pass`. Nothing is
re-exported here, so the pure core importing `gated.rules.index` never loads the store.
"""
