"""Counts in words for what gated prints: "1 row", "2 rows", "1 visitor pass"."""

from __future__ import annotations

# The rule-set kinds (their file and table names) as a person reads them: (one, many).
RULE_KIND_NOUNS: dict[str, tuple[str, str]] = {
    "schedules": ("schedule", "schedules"),
    "groups": ("group", "groups"),
    "residents": ("resident", "residents"),
    "vehicles": ("vehicle", "vehicles"),
    "tags": ("tag", "tags"),
    "visitor_passes": ("visitor pass", "visitor passes"),
    "deny_list": ("deny-list entry", "deny-list entries"),
}


def plural(count: int, one: str, many: str | None = None) -> str:
    """`count` followed by the noun in the right number ("1 lane", "0 lanes", "2 entries")."""
    return f"{count} {one if count == 1 else (many or one + 's')}"


def rule_counts(counts: dict[str, int]) -> str:
    """Rule-set counts per kind in words, in the order given ("1 resident, 2 vehicles")."""
    parts = []
    for kind, n in counts.items():
        one, many = RULE_KIND_NOUNS.get(kind, (kind, kind))
        parts.append(plural(n, one, many))
    return ", ".join(parts)
