"""Merchandising rules: pin, boost and block items for everyone, from a file, each with a time window.

The file (``RECS_RULES_FILE``, default ``<home>/rules.json``) is re-read when it changes, like the
experiments file (:class:`~recs_pipeline.serving.watched_file.WatchedFile`: no restart; an invalid
edit is refused with the reason in ``/readyz`` and the last valid rules stay in force)::

    {"rules": [
        {"name": "hero", "action": "pin", "items": ["i9"], "position": 1,
         "start": "2026-12-01T00:00:00Z", "end": "2026-12-08T00:00:00Z"},
        {"name": "winter", "action": "boost", "category": "c12", "weight": 0.1, "start": ..., "end": ...},
        {"name": "recall", "action": "block", "items": ["i5"], "start": ..., "end": ...}]}

* ``pin``: the ``items`` are placed from ``position`` (1 = top) on in every list, in the given
  order, whether the models proposed them or not; an item the user already consumed, an
  unavailable or blocked one, or one outside a requested ``category`` is not pinned.
* ``boost``: candidates among the ``items`` and/or of the ``category`` gain ``weight`` in the
  re-rank's relevance units (the ranker's scores scaled to [0, 1] over the user's candidates, as
  the diversity re-rank uses them; ``models/diversity.diversify``): 0.1 lifts an item past
  candidates scoring up to a tenth of the score range above it. A boost never adds a candidate.
* ``block``: the ``items`` and/or the ``category`` are never served (a recall, a legal hold).

Each rule runs from ``start`` (inclusive) to ``end`` (exclusive); any number may overlap. Every
item a rule pinned or boosted names the rules in the answer (``rules``), every candidate a rule
blocked is listed with ``explain=true`` (``dropped``), and both are counted in ``/metrics``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from recs_pipeline.serving.experiments import ExperimentError, parse_name, parse_window
from recs_pipeline.serving.watched_file import WatchedFile
from recs_pipeline.settings import MAX_DIVERSITY

ACTIONS = ("pin", "boost", "block")
PIN, BOOST, BLOCK = ACTIONS
MAX_RULE_ITEMS = 100


class RuleError(ExperimentError):
    """The rules file is invalid; the message says where and why."""


@dataclass(frozen=True)
class Rule:
    name: str
    action: str
    start: datetime
    end: datetime
    items: tuple[str, ...] = ()
    category: str | None = None
    position: int = 1  # pin
    weight: float = 0.0  # boost

    def active(self, at: datetime) -> bool:
        return self.start <= at < self.end


def parse_rules(raw: Any) -> tuple[Rule, ...]:
    """Rules from the file's JSON (raises :class:`RuleError` naming the problem)."""
    if not isinstance(raw, dict) or set(raw) != {"rules"} or not isinstance(raw["rules"], list):
        raise RuleError('the file must be an object {"rules": [...]}')
    rules = tuple(_rule(r, f"rules[{i}]") for i, r in enumerate(raw["rules"]))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise RuleError(f"rule names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
    return rules


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise RuleError(f"{where}: must be an object")
    allowed = {"name", "action", "start", "end", "items", "category", "position", "weight"}
    if set(raw) - allowed:
        raise RuleError(f"{where}: unknown fields {sorted(set(raw) - allowed)}")
    try:
        name = parse_name(raw.get("name"), where)
        start, end = parse_window(raw, where)
    except ExperimentError as exc:
        raise RuleError(str(exc)) from None
    action = raw.get("action")
    if action not in ACTIONS:
        raise RuleError(f"{where}.action: one of {', '.join(ACTIONS)}")
    items = raw.get("items", [])
    if not isinstance(items, list) or len(items) > MAX_RULE_ITEMS or not all(isinstance(i, str) and i for i in items):
        raise RuleError(f"{where}.items: a list of at most {MAX_RULE_ITEMS} item ids (non-empty strings)")
    category = raw.get("category")
    if category is not None and (not isinstance(category, str) or not category):
        raise RuleError(f"{where}.category: a category id (a non-empty string)")
    if action == PIN:
        if not items or category is not None:
            raise RuleError(f"{where}: a pin names its items (and no category)")
        position = raw.get("position", 1)
        if isinstance(position, bool) or not isinstance(position, int) or position < 1:
            raise RuleError(f"{where}.position: an integer >= 1 (1 = the top)")
        return Rule(name, action, start, end, tuple(items), None, position=position)
    if not items and category is None:
        raise RuleError(f"{where}: a {action} names items, a category or both")
    if action == BOOST:
        weight = raw.get("weight")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or not 0 < weight <= MAX_DIVERSITY
        ):
            raise RuleError(f"{where}.weight: a number in (0, {MAX_DIVERSITY:g}]")
        return Rule(name, action, start, end, tuple(items), category, weight=float(weight))
    for unexpected in ("position", "weight"):
        if unexpected in raw:
            raise RuleError(f"{where}: a block has no {unexpected}")
    return Rule(name, action, start, end, tuple(items), category)


class RulesFile:
    """The rules in force (re-read when the file changes; see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self._file: WatchedFile[tuple[Rule, ...]] = WatchedFile(path, parse_rules, (), what="rules file")

    @property
    def error(self) -> str | None:
        return self._file.error

    def active(self, at: datetime) -> tuple[Rule, ...]:
        return tuple(r for r in self._file.current() if r.active(at))
