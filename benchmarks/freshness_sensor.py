"""Freshness through the real daemon: a file lands, the sensor notices, a run brings it online.

    uv run python benchmarks/freshness_sensor.py --events 1000000 --files 20

Prepares a temp home with ``recs run --no-models --events N`` (or reuses ``--home``), starts the
real ``dagster-daemon run`` on the repository's workspace with that home, then lands ``--files``
small event files one at a time, each for a brand-new user (a few views of catalog items), and
polls Feast's online store (``get_online_features`` of ``user_features``) until the user appears.
Landed -> online is measured from the file's rename time (``st_ctime``, the same clock the sensor
reports) to the first successful read. Also reads back, from the Dagster instance, what each
sensor-triggered run recorded (its ``freshness_seconds`` metadata) and the run's phases.

Prints one JSON object: p50/p95/max seconds, every sample, the per-run phases, the daemon settings
in force and the machine. Record results in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(_percentile(values, 0.5), 2),
        "p95": round(_percentile(values, 0.95), 2),
        "max": round(max(values), 2) if values else float("nan"),
        "mean": round(statistics.fmean(values), 2) if values else float("nan"),
    }


def _machine() -> dict[str, object]:
    mem_kb = next(
        (
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "RECS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    for var in ("RECS_LANDING_DIR", "RECS_DUCKDB_PATH", "RECS_FEATURES_DIR"):
        env.pop(var, None)
    return env


def _prepare(home: Path, events: int, seed: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "recs_pipeline.cli", "--home", str(home), "run", "--no-models", "--events", str(events)]
        + ["--seed", str(seed)],
        cwd=REPO,
        env=_env(home),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def _catalog_items(home: Path, n: int = 50) -> list[str]:
    from recs_pipeline.data.landing import landed_files

    frames = [pl.read_parquet(p, columns=["item_id"]) for p in landed_files(home / "landing", "items")]
    return pl.concat(frames)["item_id"].unique().sort().head(n).to_list()


def _land_new_user(home: Path, items: list[str], tag: str, rng: np.random.Generator) -> tuple[str, Path]:
    from recs_pipeline.data.contract import EVENT_SCHEMA
    from recs_pipeline.data.landing import land_frame

    user = f"bench-{tag}"
    now = datetime.now(UTC)
    rows = [
        {
            "event_id": f"{user}-{k}",
            "user_id": user,
            "item_id": items[int(rng.integers(len(items)))],
            "event_type": "view",
            "ts": now - timedelta(seconds=3 - k),
            "session_id": None,
        }
        for k in range(3)
    ]
    path = land_frame(pl.DataFrame(rows, schema=EVENT_SCHEMA), home / "landing", "events", f"{user}.parquet")
    return user, path


def _wait_online(store, user: str, timeout: float, poll: float) -> float | None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            got = store.get_online_features(features=["user_features:views_30d"], entity_rows=[{"user_id": user}])
        except sqlite3.OperationalError:  # "database is locked" while a large write commits: read again
            got = None
        if got is not None and got.to_dict()["views_30d"][0] is not None:
            return time.time()
        time.sleep(poll)
    return None


def _runs(dagster_home: Path, since: float) -> tuple[list[dict[str, object]], list[str]]:
    """Phases of freshness_job runs created after ``since`` with the freshness each recorded; other jobs' runs."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    with dg.DagsterInstance.get() as instance:
        recorded = {}
        for record in instance.fetch_materializations(dg.AssetKey("online_refresh"), limit=1000).records:
            md = record.asset_materialization.metadata if record.asset_materialization else {}
            recorded[record.run_id] = {k: md[k].value for k in ("freshness_seconds", "files", "events") if k in md}
        runs = []
        for r in instance.get_run_records(filters=dg.RunsFilter(job_name="freshness_job"), ascending=True):
            if r.create_timestamp.timestamp() < since:
                continue
            runs.append(
                {
                    "run_id": r.dagster_run.run_id,
                    "status": r.dagster_run.status.value,
                    "queued_to_start_s": round(r.start_time - r.create_timestamp.timestamp(), 2)
                    if r.start_time
                    else None,
                    "start_to_end_s": round(r.end_time - r.start_time, 2) if r.start_time and r.end_time else None,
                    **recorded.get(r.dagster_run.run_id, {}),
                }
            )
        others = [  # other jobs' runs that overlapped the measurement (they compete for the DuckDB pool)
            r.dagster_run.job_name
            for r in instance.get_run_records(filters=dg.RunsFilter(updated_after=datetime.fromtimestamp(since, UTC)))
            if r.dagster_run.job_name != "freshness_job"
        ]
    return runs, others


@click.command()
@click.option("--events", type=int, default=1_000_000, show_default=True, help="Synthetic events in the home.")
@click.option("--files", "n_files", type=int, default=20, show_default=True, help="Measured files (one new user each).")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    help="Reuse a home prepared by `recs run` (default: a fresh temp home).",
)
@click.option("--timeout", type=float, default=180.0, show_default=True, help="Seconds to wait for one user.")
@click.option("--pause", type=float, default=4.0, show_default=True, help="Random pause (0..PAUSE s) between files.")
@click.option(
    "--periodic/--no-periodic",
    default=False,
    show_default=True,
    help="Leave the hourly periodic_materialization schedule on during the measurement (its full run holds the "
    "DuckDB pool for minutes, and freshness runs wait behind it); off stops it in this home's instance.",
)
def main(
    events: int,
    n_files: int,
    seed: int,
    home: Path | None,
    timeout: float,
    pause: float,
    periodic: bool,
) -> None:
    machine = _machine()
    rng = np.random.default_rng(seed)
    tmp = None
    if home is None:
        tmp = tempfile.mkdtemp(prefix="recs-freshness-")
        home = Path(tmp) / "home"
    home = home.resolve()
    prepare_s = None
    if not (home / "recs.duckdb").exists():
        click.echo(f"preparing {home} with {events:,} events ...", err=True)
        prepare_s = round(_prepare(home, events, seed), 1)
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "recs_pipeline" / "dagster.yaml", dagster_home / "dagster.yaml")  # current settings

    subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "schedule", "start" if periodic else "stop"]
        + ["periodic_materialization", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO,
        env=_env(home),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update({"RECS_HOME": str(home)})
    from recs_pipeline.defs import realtime
    from recs_pipeline.feast import feast_store
    from recs_pipeline.settings import Settings

    store = feast_store.open_store(Settings.from_env(home))
    items = _catalog_items(home)
    log = open(home / "daemon.log", "w")  # noqa: SIM115 (closed below)
    daemon = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO,
        env=_env(home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    samples, missed = [], 0
    try:
        # warm-up: the sensor's first tick sees the whole landing zone (one run refreshing every
        # entity of the history), then one more user; neither is counted
        started = time.time()
        user, path = _land_new_user(home, items, f"warmup-{uuid.uuid4().hex[:8]}", rng)
        seen = _wait_online(store, user, timeout * 3, 0.2)
        warmup_s = round(seen - path.stat().st_ctime, 1) if seen else None
        click.echo(f"warm-up user online after {warmup_s} s (daemon start + first full batch)", err=True)
        measuring_since = time.time()
        for i in range(n_files):
            time.sleep(float(rng.uniform(0, pause)))
            user, path = _land_new_user(home, items, f"{i:03d}-{uuid.uuid4().hex[:8]}", rng)
            landed = path.stat().st_ctime
            seen = _wait_online(store, user, timeout, 0.1)
            if seen is None:
                missed += 1
                click.echo(f"file {i}: not online within {timeout} s", err=True)
                continue
            samples.append(seen - landed)
            click.echo(f"file {i}: online after {seen - landed:.2f} s", err=True)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        log.close()
    runs, other_runs = _runs(dagster_home, measuring_since)
    recorded = [float(r["freshness_seconds"]) for r in runs if r.get("freshness_seconds") is not None]
    result = {
        "benchmark": "freshness_sensor",
        "command": " ".join(
            ["uv run python benchmarks/freshness_sensor.py", f"--events {events}", f"--files {n_files}"]
        ),
        "home": str(home),
        "data": {"events": events, "prepare_seconds": prepare_s},
        "daemon": {
            "sensor_minimum_interval_seconds": realtime.SENSOR_INTERVAL_SECONDS,
            "dagster_yaml": (dagster_home / "dagster.yaml").read_text(),
            "bytecode_cache": "off" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on",
            "periodic_materialization": "on" if periodic else "stopped",
        },
        "warmup_seconds": warmup_s,
        "landed_to_online_seconds": _summary(samples),
        "target_p95_seconds": realtime.FRESHNESS_TARGET_SECONDS,
        "files": n_files,
        "missed": missed,
        "samples": [round(s, 2) for s in samples],
        "runs": len(runs),
        "run_recorded_freshness_seconds": _summary(recorded),
        "run_queued_to_start_seconds": _summary([r["queued_to_start_s"] for r in runs if r["queued_to_start_s"]]),
        "run_start_to_end_seconds": _summary([r["start_to_end_s"] for r in runs if r["start_to_end_s"]]),
        "other_runs_during_measurement": other_runs,
        "machine": machine,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],  # the machine is shared: report it
        "started": datetime.fromtimestamp(started, UTC).isoformat(),
    }
    click.echo(json.dumps(result, indent=2))
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
