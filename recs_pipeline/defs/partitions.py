"""The feature snapshots' day partitions: one key per day the stored events cover, added by ingestion.

A fixed calendar (``DailyPartitionsDefinition`` from some start date to today) fails on data older
than its start and shows the UI thousands of "missing" days around data from another era. Here the
keys follow the data: after every ingestion the ``events`` asset makes the keys every day from the
oldest stored event's day to the newest one's (:func:`sync_day_partitions`), so any
contract-valid timestamp (1970 on) has its partition, and the partitions of a feature asset are
the days its data covers. Days are never removed (a snapshot built for a day stays addressable);
the keys are kept in date order, so the newest day with data is the last partition (what Dagster's
``get_last_partition_key``, the UI's partition list and its health bar end with).

Nothing here opens DuckDB: the definition is a name, and the keys live in the Dagster instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from urllib.parse import quote

import dagster as dg

from recs_pipeline.settings import DAY_PARTITIONS

days = dg.DynamicPartitionsDefinition(name=DAY_PARTITIONS)

# Where the day-partitioned feature assets sit in the Dagster UI: the code location (workspace.yaml,
# [tool.dg] in pyproject.toml) and the asset group of recs_pipeline/defs/features.py.
CODE_LOCATION = "recs_pipeline"
FEATURES_GROUP = "features"


def materialize_day_url(day: date | str) -> str:
    """The Dagster UI's page of the feature assets whose *Materialize all* dialog has ``day`` chosen.

    The launch dialogs of the pinned dagster-webserver (1.13) preselect no partition for dynamic
    partitions (nor a "Latest" button, which only time-window partitions get), so the UI cannot be
    told "default to the newest day"; what they do read is the page's query string:
    ``?partition=<key>`` becomes the dialog's initial selection (seen in a browser on the group
    page, the asset pages and the global lineage; the job launchpad ignores it). The URL is
    relative to the UI's root (no host; a ``--path-prefix`` is not included).
    """
    return f"/locations/{CODE_LOCATION}/asset-groups/{FEATURES_GROUP}?partition={quote(str(day))}"


def day_range(first: date, last: date) -> list[str]:
    """ISO days from ``first`` to ``last``, both included (``[]`` when ``last < first``)."""
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


@dataclass(frozen=True)
class KeyChanges:
    """How to turn the stored keys into the wanted ones: delete ``remove`` first, then append ``add``.

    ``remove`` is only ever keys that are put back in ``add`` at their place in date order (a
    dynamic partition's position is its insertion order), so no day disappears for good.
    """

    remove: list[str]
    add: list[str]


def key_changes(existing: Sequence[str], first: date, last: date) -> KeyChanges:
    """The changes that make the keys ``sorted(existing | days from first to last)``.

    Keys appended in date order need no deletion: only when new data starts before days already
    stored (say 1998 events landed after 2026 ones) are the later keys deleted and re-added after
    the new ones. Keys that are not ISO days are refused.

    Parameters
    ----------
    existing
        The stored keys, in their order (``instance.get_dynamic_partitions``).
    first, last
        The oldest and newest stored event's days.
    """
    for key in existing:
        try:
            date.fromisoformat(key)
        except ValueError:
            raise ValueError(
                f"the {DAY_PARTITIONS!r} partitions hold {key!r}, which is not a day (YYYY-MM-DD); "
                "delete it in the UI (or with instance.delete_dynamic_partition) and rerun"
            ) from None
    wanted = sorted(set(existing) | set(day_range(first, last)))
    keep = 0
    while keep < len(existing) and keep < len(wanted) and existing[keep] == wanted[keep]:
        keep += 1
    return KeyChanges(remove=list(existing[keep:]), add=wanted[keep:])


def sync_day_partitions(instance: dg.DagsterInstance, first: date, last: date) -> KeyChanges:
    """Make the instance's day partitions cover ``first`` .. ``last`` in date order; returns what changed."""
    changes = key_changes(instance.get_dynamic_partitions(DAY_PARTITIONS), first, last)
    for key in changes.remove:
        instance.delete_dynamic_partition(DAY_PARTITIONS, key)
    if changes.add:
        instance.add_dynamic_partitions(DAY_PARTITIONS, changes.add)
    return changes


def require_days(instance: dg.DagsterInstance, days: Sequence[str]) -> None:
    """Raise a clear error when one of ``days`` is not a day partition (a day outside the stored data).

    Dagster's own error for an unknown key names the key only; this one says which days there are.
    """
    keys = instance.get_dynamic_partitions(DAY_PARTITIONS)
    unknown = sorted(set(days) - set(keys))
    if unknown:
        covered = f"{keys[0]} .. {keys[-1]} ({len(keys)} days)" if keys else "none yet: ingest events first"
        raise ValueError(
            f"no feature partition for {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}: the "
            f"partitions are the days the stored events cover, {covered}; pick days among them"
        )
