"""Quality of every method on one temporal protocol, per data set.

    uv run python benchmarks/quality.py --source synthetic --events 1000000
    uv run python benchmarks/quality.py --source taobao
    uv run python benchmarks/quality.py --source retailrocket

Runs `recs run` in a fresh temp home (the same command users run) and prints the evaluation
table (reports/evaluation.md), the ratios the targets are stated in, the validation figures the
promotion gate used, and the wall time. Record results in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click


@click.command()
@click.option("--source", type=click.Choice(["synthetic", "retailrocket", "taobao", "otto"]), default="synthetic")
@click.option("--events", type=int, default=1_000_000, show_default=True, help="Synthetic events.")
@click.option("--seed", type=int, default=7, show_default=True)
def main(source: str, events: int, seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="recs-quality-") as tmp:
        env = {**os.environ, "RECS_HOME": f"{tmp}/home", "DAGSTER_HOME": f"{tmp}/dagster"}
        args = [sys.executable, "-m", "recs_pipeline.cli", "run", "--source", source]
        if source == "synthetic":
            args += ["--events", str(events), "--seed", str(seed)]
        started = time.perf_counter()
        proc = subprocess.run(args, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"recs run failed:\n{proc.stderr[-4000:]}")
        summary = json.loads(proc.stdout[proc.stdout.index("{") :])
        report = json.loads(Path(summary["evaluation"]).read_text())
        print(Path(summary["evaluation"]).with_suffix(".md").read_text())
        ndcg = {m: report[m]["ndcg@20"] for m in ("popular", "trending", "covis", "als", "als+lightgbm")}
        ratio = lambda a, b: round(ndcg[a] / ndcg[b], 3) if ndcg[b] else None  # noqa: E731
        print(
            json.dumps(
                {
                    "source": source,
                    "events": events if source == "synthetic" else None,
                    "test_users": report["users"],
                    "windows": report["windows"],
                    "ndcg@20": ndcg,
                    "als+lightgbm / als": ratio("als+lightgbm", "als"),
                    "als+lightgbm / popular": ratio("als+lightgbm", "popular"),
                    "validation ndcg@20": {m: r["ndcg@20"] for m, r in report["validation"].items()},
                    "promoted": summary["promoted"],
                    "promotion_gate": summary["promotion_gate"],
                    "recs_run_seconds": round(seconds, 1),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
