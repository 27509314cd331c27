"""Benchmark the foundation pipeline stage by stage: generate + land, ingest, features, Feast.

    uv run python benchmarks/pipeline.py --events 1000000 --events 10000000

Each size runs in a fresh temp home through the same code `recs run` uses (Dagster in-process runs
with an ephemeral instance). Prints one JSON object per size: wall seconds per stage, events/s,
the SQL-only seconds each asset reported, and the peak RSS of this process and its children
(sampled every 50 ms). Record results in docs/BENCHMARKS.md with the machine they ran on.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import click
import dagster as dg
import psutil

from recs_pipeline.data.synthetic import SyntheticConfig, write_synthetic
from recs_pipeline.runner import PipelineRunner
from recs_pipeline.settings import Settings


class PeakRss:
    """The peak resident memory of this process plus its children since the last :meth:`reset`."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak, self.overall, self._stop = interval, 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            self.peak = max(self.peak, total)
            self.overall = max(self.overall, total)
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak = psutil.Process().memory_info().rss

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _metadata(result: dg.ExecuteInProcessResult, asset: str, key: str) -> float:
    return float(result.asset_materializations_for_node(asset)[0].metadata[key].value)


def _step_seconds(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult, step: str) -> float:
    """Wall seconds of one step of a run, as the instance recorded them."""
    [stats] = [s for s in instance.get_run_step_stats(result.run_id) if s.step_key == step]
    return float((stats.end_time or 0.0) - (stats.start_time or 0.0))


def run_once(n_events: int, seed: int) -> dict:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="recs-bench-") as tmp, PeakRss() as rss:
        settings = Settings.from_env(Path(tmp) / "home")
        settings.ensure_dirs()
        stages: dict[str, float] = {}
        t = time.perf_counter()
        summary = write_synthetic(SyntheticConfig(n_events=n_events, seed=seed), settings.landing_dir)
        stages["generate_and_land"] = time.perf_counter() - t

        runner = PipelineRunner(settings, instance=dg.DagsterInstance.ephemeral())
        t = time.perf_counter()
        ingest = runner.materialize("ingest")
        stages["ingest"] = time.perf_counter() - t
        [day] = runner.snapshot_days(1)
        t = time.perf_counter()
        feats = runner.materialize("features", partition=day)
        stages["features"] = time.perf_counter() - t
        t = time.perf_counter()
        feast = runner.materialize("feast")
        stages["feast_apply_and_materialize"] = time.perf_counter() - t

        sql_seconds = {
            a: _metadata(feats, a, "seconds")
            for a in ("user_features", "item_features", "user_category_features", "interactions")
        }
        rows = {a: int(_metadata(feats, a, "rows")) for a in sql_seconds}
        total = sum(stages.values())
        return {
            "events": n_events,
            "users": summary.n_users,
            "items": summary.n_items,
            "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
            "total_seconds": round(total, 2),
            "events_per_second": {k: round(n_events / v) for k, v in stages.items()},
            "ingest_sql_seconds": _metadata(ingest, "events", "seconds"),
            "ingest_step_seconds": {
                step: round(_step_seconds(runner.instance, ingest, step), 2) for step in ("catalog_items", "events")
            },
            "landed_files": {kind: len(list((settings.landing_dir / kind).glob("*"))) for kind in ("events", "items")},
            "feature_sql_seconds": {k: round(v, 2) for k, v in sql_seconds.items()},
            "feature_sql_events_per_second": round(n_events / sum(sql_seconds.values())),
            "feature_rows": rows,
            "online_values_checked": int(_metadata(feast, "online_features", "values_compared")),
            "online_write_seconds": {
                k.removeprefix("seconds/"): round(float(v.value), 2)
                for k, v in feast.asset_materializations_for_node("online_features")[0].metadata.items()
                if k.startswith("seconds/")
            },
            "feast_apply_seconds": round(_step_seconds(runner.instance, feast, "feast_registry"), 2),
            "peak_rss_gb": round(rss.peak / 1e9, 2),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        }


@click.command()
@click.option("--events", "sizes", type=int, multiple=True, default=[1_000_000], show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
def main(sizes: tuple[int, ...], seed: int) -> None:
    """Run the pipeline benchmark for each --events size."""
    for n in sizes:
        print(json.dumps(run_once(n, seed), indent=2), flush=True)


if __name__ == "__main__":
    main()
