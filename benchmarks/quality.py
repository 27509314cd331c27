"""Quality of every method on one temporal protocol, per data set.

    uv run python benchmarks/quality.py --source synthetic --events 1000000
    uv run python benchmarks/quality.py --source taobao
    uv run python benchmarks/quality.py --source retailrocket
    RECS_TUNE_TRIALS=30 RECS_TUNE_SECONDS=90 uv run python benchmarks/quality.py   # with the searches

Runs `recs run` in a fresh temp home (the same command users run) and prints the evaluation
report (reports/evaluation.md: both protocols), the figures the targets are stated in (per protocol:
the champion against the best baseline, ratio and paired difference with its interval), the
validation figures the promotion gate used, and the wall time. Record results in docs/BENCHMARKS.md.
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
        params = json.loads(Path(f"{tmp}/home/training/params.json").read_text())
        print(Path(summary["evaluation"]).with_suffix(".md").read_text())
        figures = _figures(source, events, report, summary, seconds, params)
        figures["test_candidate_recall"] = _candidate_recall(Path(f"{tmp}/home/training"), params["limits"])
        print(json.dumps(figures, indent=2))


def _candidate_recall(training: Path, limits: dict[str, int]) -> dict[str, float]:
    """Share of the test fold's relevant (user, item) pairs among each source's candidates (at its
    limit) and among the merged candidates: what a source adds to the ranker's ceiling."""
    from recs_pipeline.models import training as model_training
    from recs_pipeline.models.workspace import RetrainWorkspace

    ws = RetrainWorkspace(training)
    truth = ws.truth("test")
    from recs_pipeline.defs.models import BASELINE_DEPTH

    # a source that is off (limit 0) proposes no candidates: its baseline list's recall instead
    depth = {name: limit or BASELINE_DEPTH for name, limit in limits.items()}
    recall = {
        f"{name}@{depth[name]}{'' if limits[name] else ' (off)'}": round(
            model_training.recall(ws.per_source("test", name), truth, k=depth[name]), 4
        )
        for name in sorted(limits)
    }
    recall["merged"] = round(model_training.recall(ws.candidates("test"), truth, k=None), 4)
    return recall


def _figures(source: str, events: int, report: dict, summary: dict, seconds: float, params: dict) -> dict:
    """The targets' figures: per protocol (repeat-aware, discovery) of the test fold, every method's
    NDCG@20, the best baseline, the champion's ratio to it and their paired difference with its interval."""
    champion = "als+lightgbm"
    protocols = {}
    for name, protocol in report["protocols"]["test"].items():
        methods, best = protocol["methods"], protocol["best_baseline"]
        ndcg = {m: r["ndcg@20"] for m, r in methods.items()}
        difference = protocol["differences"].get(champion, {})
        protocols[name] = {
            "users": protocol["users"],
            "ndcg@20": ndcg,
            "best_baseline": best,
            f"{champion} / {best}": round(ndcg[champion] / ndcg[best], 3) if ndcg[best] else None,
            f"{champion} - {best}": [difference.get("ndcg@20"), difference.get("ndcg@20_ci")],
        }
    return {
        "source": source,
        "events": events if source == "synthetic" else None,
        "test_users": report["users"],
        "windows": report["windows"],
        "protocols": protocols,
        "validation ndcg@20": {m: r["ndcg@20"] for m, r in report["validation"].items()},
        "promoted": summary["promoted"],
        "promotion_gate": summary["promotion_gate"],
        "recs_run_seconds": round(seconds, 1),
        # the hyper-parameter searches (RECS_TUNE_TRIALS), their start and best validation figures
        "tuning": {
            step: {k: params[f"tuning_{step}"].get(k) for k in ("trials_run", "start_value", "best_value", "best")}
            for step in ("als", "ranker")
        },
    }


if __name__ == "__main__":
    main()
