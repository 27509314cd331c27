"""How well could any global list do, and a list of new items, against trending (issue 11: explain trending).

    uv run recs --home /tmp/tr run --events 200000 --seed 7
    uv run python benchmarks/trending_ceiling.py --home /tmp/tr

On a home where `recs run` trained, for the test fold's users (the retrain's saved lists and truth):
NDCG@20 of the saved trending and popular lists, of the oracle global list (the 20 items most relevant
in the test window itself: the ceiling of any one list for everyone), of the oracle list of items
first seen in the 7 days before the cutoff (the ceiling of a new-item list), the share of the test
window's (user, item) pairs those new items make, and how many of trending's top 20 are new. Prints
one JSON object.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import click
import numpy as np
import polars as pl

from recs_pipeline.data.contract import ITEM_ID, TS, USER_ID
from recs_pipeline.models import metrics
from recs_pipeline.models.workspace import RetrainWorkspace
from recs_pipeline.settings import Settings

K = 20
NEW_DAYS = 7


@click.command()
@click.option("--home", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
def main(home: Path) -> None:
    ws = RetrainWorkspace(Settings.from_env(home).training_dir)
    fold = ws.split().folds["test"]
    truth = ws.truth("test")
    users = sorted(truth[USER_ID].unique().to_list())

    def ndcg(ranked: pl.DataFrame) -> float:
        per_user = metrics.per_user_metrics(ranked.select(USER_ID, ITEM_ID, "rank"), truth, users, ks=(K,))
        return round(float(per_user[f"ndcg@{K}"].to_numpy().mean()), 4)

    def for_everyone(items: list[str]) -> pl.DataFrame:
        n = len(items)
        return pl.DataFrame(
            {
                USER_ID: np.repeat(users, n),
                ITEM_ID: np.tile(items, len(users)),
                "rank": np.tile(np.arange(1, n + 1), len(users)),
            }
        )

    def most_relevant(pairs: pl.DataFrame) -> list[str]:
        gains = (
            pairs.group_by(ITEM_ID)
            .agg(pl.col("relevance").sum())
            .sort(["relevance", ITEM_ID], descending=[True, False])
        )
        return gains[ITEM_ID].head(K).to_list()

    first_seen = ws.events().group_by(ITEM_ID).agg(pl.col(TS).min().alias("first"))
    new = first_seen.filter(
        (pl.col("first") >= fold.cutoff - timedelta(days=NEW_DAYS)) & (pl.col("first") < fold.cutoff)
    )[ITEM_ID]
    new_truth = truth.join(new.to_frame(), on=ITEM_ID, how="semi")
    trending = ws.per_source("test", "trending").filter(pl.col("rank") <= K)
    result = {
        "home": str(home),
        "test_users": len(users),
        f"ndcg@{K}": {
            "trending": ndcg(trending),
            "popular": ndcg(ws.per_source("test", "popular").filter(pl.col("rank") <= K)),
            "oracle_global_list": ndcg(for_everyone(most_relevant(truth))),
            "oracle_new_item_list": ndcg(for_everyone(most_relevant(new_truth))),
        },
        "new_items": new.len(),
        "new_items_share_of_test_pairs": round(new_truth.height / truth.height, 4),
        f"trending_top{K}_new": int(trending[ITEM_ID].unique().is_in(new.implode()).sum()),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
