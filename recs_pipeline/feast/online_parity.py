"""Check that Feast's online store serves exactly the values computed in DuckDB."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import duckdb

from recs_pipeline.feast.feast_store import SNAPSHOT_VIEWS, online_features
from recs_pipeline.warehouse.features import FEATURE_KEYS
from recs_pipeline.warehouse.sql import scalar

if TYPE_CHECKING:
    from feast import FeatureStore

NON_FEATURE_COLUMNS = {"event_timestamp", "created_timestamp"}


def newest_snapshots(con: duckdb.DuckDBPyConnection) -> dict[str, datetime]:
    """Newest snapshot time of each view's table that has rows.

    A view can be legitimately empty (OTTO data has no catalog, so no user x category rows); it is
    left out. Raises when no view has a snapshot at all.
    """
    newest = {}
    for view in SNAPSHOT_VIEWS:
        ts = scalar(con, f"SELECT max(event_timestamp) FROM {view}")  # noqa: S608 (fixed names)
        if ts is not None:
            newest[view] = ts
    if not newest:
        raise ValueError("no feature snapshot has rows yet: materialise the feature assets first")
    return newest


@dataclass
class ParityReport:
    entities: int = 0
    values: int = 0
    mismatches: list[tuple[str, tuple[Any, ...], str, Any, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.values > 0 and not self.mismatches

    def counts(self) -> dict[str, int]:
        return {"entities_compared": self.entities, "values_compared": self.values, "mismatches": len(self.mismatches)}


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def compare(
    con: duckdb.DuckDBPyConnection,
    store: FeatureStore,
    snapshots: dict[str, datetime],
    *,
    sample: int = 200,
    seed: int = 0,
) -> ParityReport:
    """Compare online values with the DuckDB snapshot rows for up to ``sample`` entities per view."""
    report = ParityReport()
    for view, as_of in snapshots.items():
        keys = FEATURE_KEYS[view]
        columns = [r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()]  # noqa: S608
        feature_cols = [c for c in columns if c not in NON_FEATURE_COLUMNS and c not in keys]
        rows = con.execute(
            f"SELECT {', '.join(keys + tuple(feature_cols))} FROM {view} WHERE event_timestamp = $as_of "  # noqa: S608
            f"ORDER BY hash({', '.join(keys)}, $seed) LIMIT $n",
            {"as_of": as_of, "seed": seed, "n": sample},
        ).fetchall()
        if not rows:
            continue
        entity_rows = [dict(zip(keys, r[: len(keys)], strict=True)) for r in rows]
        online = online_features(store, view, entity_rows, feature_cols)
        for i, row in enumerate(rows):
            report.entities += 1
            for j, col in enumerate(feature_cols):
                expected, got = row[len(keys) + j], online[col][i]
                report.values += 1
                if not _same(expected, got):
                    report.mismatches.append((view, tuple(row[: len(keys)]), col, expected, got))
    return report
