"""Ranking quality against list diversity for a few strengths of the category re-rank.

    uv run recs --home /tmp/div/home run --events 1000000 --seed 7
    uv run python benchmarks/diversity.py /tmp/div/home --strengths 0,0.05,0.1,0.25,0.5,1,2

Takes the last retrain's test fold of ``HOME`` (the evaluated ranker, the fold's ranking rows, its
truth and every user with a label: what the evaluation judges), ranks each user's candidates with
the ranker and re-ranks them with :func:`recs_pipeline.models.diversity.diversify` (the function the
service runs) at each strength, then reports NDCG@k and Recall@k (the evaluation's metric code,
``all`` protocol), the paired difference of NDCG@k to strength 0 with its bootstrap interval,
intra-list diversity and category coverage of the top k (categories: the catalog as it was before the
fold's cutoff). Prints one JSON object and a Markdown table.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
import polars as pl

from recs_pipeline.data.contract import ITEM_ID, USER_ID
from recs_pipeline.models import metrics, ranking
from recs_pipeline.models.diversity import category_coverage, intra_list_diversity, rank_top_k_diverse
from recs_pipeline.models.retrieval.lists import catalog_as_of
from recs_pipeline.models.workspace import RetrainWorkspace
from recs_pipeline.settings import Settings


@click.command()
@click.argument("home", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--strengths", default="0,0.05,0.1,0.25,0.5,1,2", show_default=True)
@click.option("--k", type=int, default=20, show_default=True)
@click.option("--fold", default="test", show_default=True)
def main(home: Path, strengths: str, k: int, fold: str) -> None:
    settings = Settings.from_env(home)
    ws = RetrainWorkspace(settings.training_dir)
    started = time.perf_counter()
    load_before = os.getloadavg()
    truth = ws.truth(fold)
    users = sorted(truth[USER_ID].unique().to_list())
    catalog = catalog_as_of(ws.catalog(), ws.split().folds[fold].cutoff)  # as the fold's model knew it
    scorer = ranking.load_scorer(ws.ranker_dir)
    parts = []
    for path in ws.row_parts(fold):
        rows = pl.read_parquet(path, columns=None)
        scores = ranking.score(scorer, rows)
        cats = rows.select(ITEM_ID).join(catalog, on=ITEM_ID, how="left")["category_id"].to_numpy()
        parts.append((rows.select(USER_ID, ITEM_ID), scores, cats))
    results: dict[str, dict] = {}
    per_user: dict[str, pl.DataFrame] = {}
    for strength in (float(x) for x in strengths.split(",")):
        t = time.perf_counter()
        ranked = pl.concat(rank_top_k_diverse(r, s, c, k=k, strength=strength) for r, s, c in parts)
        seconds = time.perf_counter() - t
        ndcg = metrics.ndcg_at_k(ranked, truth, users, k=k)
        recall = metrics.recall_at_k(ranked, truth, users, k=k)
        name = f"{strength:g}"
        per_user[name] = ndcg
        results[name] = {
            f"ndcg@{k}": float(ndcg[f"ndcg@{k}"].mean()),
            f"recall@{k}": float(recall[f"recall@{k}"].mean()),
            f"ild@{k}": intra_list_diversity(ranked, catalog, k=k),
            f"category_coverage@{k}": category_coverage(ranked, catalog, k=k),
            "rerank_seconds": round(seconds, 2),
        }
    base = next(iter(per_user))
    for name, frame in per_user.items():
        diff = metrics.paired_difference(frame, per_user[base], metrics=[f"ndcg@{k}"])[f"ndcg@{k}"]
        results[name][f"ndcg@{k}_minus_{base}"] = diff
    out = {
        "home": str(home),
        "fold": fold,
        "users": len(users),
        "k": k,
        "results": results,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    click.echo(json.dumps(out, indent=2))
    click.echo(f"\n| strength | NDCG@{k} | − strength {base}, paired | Recall@{k} | ILD@{k} | category coverage@{k} |")
    click.echo("|---|---|---|---|---|---|")
    for name, r in results.items():
        d = r[f"ndcg@{k}_minus_{base}"]
        click.echo(
            f"| {name} | {r[f'ndcg@{k}']:.4f} | {d['value']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] | "
            f"{r[f'recall@{k}']:.4f} | {r[f'ild@{k}']:.3f} | {r[f'category_coverage@{k}']:.3f} |"
        )


if __name__ == "__main__":
    main()
