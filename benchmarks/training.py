"""Benchmark the `models` asset group on an existing home: wall seconds and peak RSS per asset.

    uv run --frozen recs --home /tmp/h2m run --events 2000000 --no-models   # build a home once
    uv run --frozen python benchmarks/training.py --home /tmp/h2m [--profile /tmp/prof]

Runs what `recs run` runs for the models (``PipelineRunner``): ``temporal_split``, the folds'
feature partitions (the features group, not timed as models), then each training asset in its
own in-process run, in order, so every asset gets its own wall time and its own peak resident
memory (this process and its children, sampled every 50 ms; the peak of the whole process is
also printed, and `/usr/bin/time -v` around the command gives the kernel's figure) and its CPU
seconds (a shared machine inflates wall time far more than CPU time). With
``--profile DIR`` each asset's run is profiled with cProfile into ``DIR/<asset>.prof`` and the
top functions by cumulative time are printed. The load average is printed with every figure:
the machine is shared. Prints one JSON object.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import platform
import pstats
import time
from pathlib import Path

import click
import dagster as dg
import psutil
from pipeline import PeakRss  # benchmarks/ is the script's directory, first on sys.path

from recs_pipeline.defs.models import model_assets, temporal_split
from recs_pipeline.models.workspace import RetrainWorkspace, missing_fold_snapshots
from recs_pipeline.runner import PipelineRunner
from recs_pipeline.settings import Settings
from recs_pipeline.warehouse import features

MODELS = "models"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its finished children: less sensitive to the
    machine's other work than wall time."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _events(settings: Settings) -> int:
    import polars as pl

    path = settings.training_dir / "events.parquet"
    return pl.scan_parquet(path).select(pl.len()).collect().item()


@click.command()
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), required=True, help="A built home.")
@click.option("--profile", type=click.Path(file_okay=False, path_type=Path), help="cProfile each asset here.")
@click.option("--top", type=int, default=25, show_default=True, help="Functions printed per profile.")
@click.option("--skip-split", is_flag=True, help="Reuse the split and fold partitions already in the home.")
@click.option(
    "--reuse-fold-features",
    is_flag=True,
    help="Time the split but reuse the folds' feature partitions already built (same data, same split).",
)
def main(home: Path, profile: Path | None, top: int, skip_split: bool, reuse_fold_features: bool) -> None:
    """Time (and optionally profile) every asset of the models group on HOME."""
    settings = Settings.from_env(home)
    runner = PipelineRunner(settings, instance=dg.DagsterInstance.ephemeral())
    if profile:
        profile.mkdir(parents=True, exist_ok=True)
    assets: dict[str, dict] = {}
    with PeakRss() as rss:

        def timed(name: str, fn, *args, **kwargs) -> None:
            rss.reset()
            load_before = _load()
            cpu_before = _cpu()
            profiler = cProfile.Profile() if profile else None
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            fn(*args, **kwargs)
            if profiler:
                profiler.disable()
            seconds = time.perf_counter() - started
            time.sleep(0.1)  # one more RSS sample
            assets[name] = {
                "seconds": round(seconds, 2),
                "cpu_seconds": round(_cpu() - cpu_before, 2),
                "peak_rss_gb": round(rss.peak / 1e9, 2),
                "load_before": load_before,
                "load_after": _load(),
            }
            print(json.dumps({name: assets[name]}), flush=True)
            if profiler and profile:
                profiler.dump_stats(str(profile / f"{name}.prof"))
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
                (profile / f"{name}.txt").write_text(out.getvalue())

        split_key = temporal_split.key.to_user_string()
        if not skip_split:
            timed(split_key, runner.materialize, MODELS, selection=dg.AssetSelection.assets(temporal_split))
            started = time.perf_counter()
            split = RetrainWorkspace(settings.training_dir).split()
            missing = missing_fold_snapshots(settings.features_dir, split, features.FEATURE_TABLES)
            for day in split.snapshot_days():
                if not reuse_fold_features or day in missing:
                    runner.materialize("features", partition=day)  # the folds' partitions (features group)
            fold_features = round(time.perf_counter() - started, 2)
        else:
            fold_features = None
        for asset in model_assets:
            name = asset.key.to_user_string()
            if name == split_key:
                continue
            timed(name, runner.materialize, MODELS, selection=dg.AssetSelection.assets(asset), raise_on_error=False)
    models_seconds = sum(a["seconds"] for a in assets.values())
    models_cpu = sum(a["cpu_seconds"] for a in assets.values())
    print(
        json.dumps(
            {
                "home": str(home),
                "events": _events(settings),
                "assets": assets,
                "models_group_seconds": round(models_seconds, 2),
                "models_group_cpu_seconds": round(models_cpu, 2),
                "models_group_peak_rss_gb": round(max(a["peak_rss_gb"] for a in assets.values()), 2),
                "process_peak_rss_gb": round(rss.overall / 1e9, 2),
                "split_and_fold_features_seconds": fold_features,
                "load_at_end": _load(),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
            },
            indent=2,
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
