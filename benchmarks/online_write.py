"""Benchmark online writes into SQLite: the bulk path against Feast's write path, in feature values per second.

    uv run python benchmarks/online_write.py --home data              # a home built by `recs run`
    uv run python benchmarks/online_write.py --home /tmp/rr --feast-rows 20000

For each snapshot view of the home's newest snapshots, into a fresh online store database (the
home's own is never touched):

* ``bulk_insert``: :func:`recs_pipeline.feast.feast_store.write_online` of every row into empty tables
  (the first materialisation of a day);
* ``bulk_update``: the same rows one second newer (every row replaced: the next day's snapshot);
* ``bulk_unchanged``: the same rows again (a re-materialised snapshot: nothing is written);
* ``feast_path``: Feast's ``write_to_online_store`` (its per-value protobuf conversion, then the same
  store's ``online_write_batch``) for the first ``--feast-rows`` rows;
* ``feast_sqlite``: Feast's own ``sqlite`` store (row per feature) for the same rows, the reference.

Values = rows x features of the view. Prints one JSON object with the load average before and after.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.compute as pc

from recs_pipeline.feast import feast_store, online_parity
from recs_pipeline.settings import Settings
from recs_pipeline.warehouse import db


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def _later(rows: pa.Table, seconds: int) -> pa.Table:
    i = rows.column_names.index("event_timestamp")
    return rows.set_column(i, "event_timestamp", pc.add(rows["event_timestamp"], pa.scalar(timedelta(seconds=seconds))))


@click.command()
@click.option("--home", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--feast-rows", type=int, default=20_000, show_default=True, help="rows per view for Feast's paths")
def main(home: Path, feast_rows: int) -> None:
    """Time the online writes of HOME's newest snapshots."""
    from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig

    settings = Settings.from_env(home)
    load_before = os.getloadavg()
    with db.connect(settings.duckdb_path, read_only=True) as con:
        snapshots = online_parity.newest_snapshots(con)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="recs-online-bench-") as tmp:
        shutil.copytree(settings.feast_dir, Path(tmp) / "feast", ignore=shutil.ignore_patterns("online_store.db*"))
        store = feast_store.open_store(settings)
        store.config.online_store.path = str(Path(tmp) / "feast" / "online_store.db")
        bulk = store._get_provider().online_store
        views = [store.get_feature_view(v) for v in snapshots]
        bulk.update(store.config, [], views, [], [], False)
        plain = SqliteOnlineStore()
        plain_config = store.config.model_copy()
        plain_config._online_store = SqliteOnlineStoreConfig(path=str(Path(tmp) / "feast_sqlite.db"))
        plain.update(plain_config, [], views, [], [], False)

        for view, as_of in snapshots.items():
            fv = store.get_feature_view(view)
            n_features = len(fv.features)
            read_s, rows = _timed(
                lambda f=fv, t=as_of: feast_store.source_rows(
                    f, t - timedelta(microseconds=1), t + timedelta(microseconds=1)
                )
            )
            figures: dict[str, Any] = {"rows": rows.num_rows, "features": n_features, "read_source_seconds": read_s}
            for name, table in (("bulk_insert", rows), ("bulk_update", _later(rows, 1)), ("bulk_unchanged", None)):
                data = table if table is not None else _later(rows, 1)
                seconds, changed = _timed(lambda d=data, v=view: feast_store.write_online(store, v, d))
                figures[name] = {
                    "seconds": round(seconds, 3),
                    "rows_changed": changed,
                    "values_per_second": round(rows.num_rows * n_features / seconds),
                }
            sample = _later(rows.slice(0, feast_rows), 2).to_pandas(types_mapper=pd.ArrowDtype)
            seconds, _ = _timed(lambda s=sample, v=view: store.write_to_online_store(v, s))
            figures["feast_path"] = {
                "rows": len(sample),
                "seconds": round(seconds, 3),
                "values_per_second": round(len(sample) * n_features / seconds),
            }
            from feast.utils import _convert_arrow_to_proto

            protos = _convert_arrow_to_proto(pa.Table.from_pandas(sample, preserve_index=False), fv, {})
            seconds, _ = _timed(lambda p=protos, f=fv: plain.online_write_batch(plain_config, f, p, None))
            figures["feast_sqlite_write_only"] = {
                "rows": len(sample),
                "seconds": round(seconds, 3),
                "values_per_second": round(len(sample) * n_features / seconds),
            }
            results[view] = figures
        total_values = sum(f["rows"] * f["features"] for f in results.values())
        total_bulk = sum(f["bulk_insert"]["seconds"] for f in results.values())
    print(
        json.dumps(
            {
                "home": str(home),
                "views": results,
                "bulk_insert_values_per_second": round(total_values / total_bulk),
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
