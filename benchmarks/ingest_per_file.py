"""Ingestion cost per landed file against the events already stored: does it grow with the store?

    uv run recs --home /tmp/ing/home generate --events 20000000 --seed 1
    uv run recs --home /tmp/ing/home generate --events 30000000 --seed 2   # 50 files in all
    uv run python benchmarks/ingest_per_file.py /tmp/ing/home

Ingests every landed event file not yet in the ledger, one at a time through the pipeline's own
``ingest_file`` (validation, dedup against every stored event id, sessions, ledger), and prints
each file's seconds next to the events stored before it, then the load average. ``--by-step`` adds
the seconds of each SQL script of the file's transaction (``sql/<name>.sql``), to see which part
grows with the store.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from recs_pipeline.settings import Settings
from recs_pipeline.warehouse import db, ingest


@click.command()
@click.argument("home", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--by-step", is_flag=True, help="Also time each SQL script of every file.")
def main(home: Path, by_step: bool) -> None:
    settings = Settings.from_env(home)
    steps: dict[str, float] = {}
    if by_step:
        original = ingest.run_sql

        def timed(con, name, **params):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            try:
                return original(con, name, **params)
            finally:
                steps[name] = steps.get(name, 0.0) + time.perf_counter() - started

        ingest.run_sql = timed
    click.echo(f"load average at start: {os.getloadavg()}")
    with db.connect(settings.duckdb_path) as con:
        for i, path in enumerate(ingest.landed_files(settings.landing_dir, "events")):
            stored = con.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[index]
            started = time.perf_counter()
            outcome = ingest.ingest_file(con, path, "events", now=datetime.now(UTC))
            seconds = time.perf_counter() - started
            click.echo(f"file {i:3d} {path.name}: stored before {stored:>12,}  {seconds:7.2f} s  {outcome.status}")
            if steps:
                click.echo(
                    "    " + "  ".join(f"{name} {s:.2f}" for name, s in sorted(steps.items(), key=lambda x: -x[1]))
                )
                steps.clear()
    click.echo(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
