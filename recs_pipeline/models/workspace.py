"""The retrain's working files: one owner for their names and formats.

Every step of a retrain (split, sources, candidates, ranking rows, ranker, evaluation, registration)
reads and writes through :class:`RetrainWorkspace`, so no file name is spelled twice and the
parameters each step ran with are collected into the bundle's :class:`~recs_pipeline.models.bundle.Recipe`.

Layout under ``<home>/training``::

    events.parquet  split.json  params.json  evaluation.json  challenger.json
    ranker/          the evaluated ranker (train fold, early stopping on valid)
    ranker_refit/    the served ranker (every fold's rows, the evaluated ranker's round count)
    <fold>/sources/  <fold>/per_source/<source>.parquet  <fold>/candidates.parquet
    <fold>/truth.parquet  <fold>/users.json  <fold>/rows/part-NNNNN.parquet
    refit/sources/   the served sources (every event)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from recs_pipeline.models.protocol import Fold, TemporalSplit
from recs_pipeline.models.training import FoldSources, UserSample


class RetrainWorkspace:
    """Paths and small JSON records of one retrain under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- whole-retrain files -------------------------------------------------------------------

    @property
    def events_path(self) -> Path:
        return self.root / "events.parquet"

    @property
    def catalog_path(self) -> Path:
        """Every catalog version (``item_id``, ``category_id``, ``price``, ``updated_at``), exported with the events."""
        return self.root / "catalog.parquet"

    def catalog(self) -> pl.DataFrame:
        return pl.read_parquet(self.catalog_path)

    @property
    def ranker_dir(self) -> Path:
        """The evaluated ranker (what the evaluation and the gate judge)."""
        return self.root / "ranker"

    @property
    def refit_ranker_dir(self) -> Path:
        """The served ranker, refitted on every fold's rows."""
        return self.root / "ranker_refit"

    def events(self) -> pl.DataFrame:
        return pl.read_parquet(self.events_path)

    def save_split(self, split: TemporalSplit) -> None:
        self._write("split", {k: getattr(split, k).isoformat() for k in ("t1", "t2", "t3", "end")})

    def split(self) -> TemporalSplit:
        raw = self._read("split")
        return TemporalSplit(*(datetime.fromisoformat(raw[k]) for k in ("t1", "t2", "t3", "end")))

    def record_params(self, step: str, params: Mapping[str, Any]) -> None:
        """Remember the parameters a step ran with (the bundle's recipe is built from them)."""
        path = self.root / "params.json"
        recorded = json.loads(path.read_text()) if path.exists() else {}
        recorded[step] = dict(params)
        path.write_text(json.dumps(recorded, indent=2))

    def params(self, step: str) -> dict[str, Any]:
        recorded = json.loads((self.root / "params.json").read_text())
        if step not in recorded:
            raise FileNotFoundError(f"the retrain step {step!r} has not run in {self.root}: materialise it first")
        return dict(recorded[step])

    def save_evaluation(self, results: Mapping[str, Any]) -> None:
        self._write("evaluation", results)

    def evaluation(self) -> dict[str, Any]:
        return self._read("evaluation")

    def save_challenger(self, *, version: str, passed: bool, verdict: str) -> None:
        self._write("challenger", {"version": version, "passed": passed, "verdict": verdict})

    def challenger(self) -> dict[str, Any]:
        return self._read("challenger")

    # -- per fold ------------------------------------------------------------------------------

    def fold_dir(self, fold: str) -> Path:
        return self.root / fold

    def save_sources(self, fold: str, sources: FoldSources) -> None:
        sources.save(self.fold_dir(fold) / "sources", compress=False)  # working files: fast over small

    def sources(self, fold: str) -> FoldSources:
        return FoldSources.load(self.fold_dir(fold) / "sources")

    def save_candidates(
        self,
        fold: str,
        *,
        per_source: Mapping[str, pl.DataFrame],
        merged: pl.DataFrame,
        truth: pl.DataFrame,
        sample: UserSample,
    ) -> None:
        folder = self.fold_dir(fold)
        (folder / "per_source").mkdir(parents=True, exist_ok=True)
        for name, cands in per_source.items():
            cands.write_parquet(folder / "per_source" / f"{name}.parquet")
        merged.write_parquet(folder / "candidates.parquet")
        truth.write_parquet(folder / "truth.parquet")
        (folder / "users.json").write_text(json.dumps(sample.to_json(), indent=2))

    def user_sample(self, fold: str) -> dict[str, Any]:
        """How the fold's users were chosen (:meth:`UserSample.to_json`): ranked, in the fold, seed, cap."""
        path = self.fold_dir(fold) / "users.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: materialise candidates first")
        return dict(json.loads(path.read_text()))

    def per_source(self, fold: str, name: str) -> pl.DataFrame:
        return pl.read_parquet(self.fold_dir(fold) / "per_source" / f"{name}.parquet")

    def candidates(self, fold: str) -> pl.DataFrame:
        return pl.read_parquet(self.fold_dir(fold) / "candidates.parquet")

    def truth(self, fold: str) -> pl.DataFrame:
        return pl.read_parquet(self.fold_dir(fold) / "truth.parquet")

    def write_rows(self, fold: str, chunks: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
        """Write the fold's ranking rows part by part (parts hold whole users), yielding each part."""
        parts = self.fold_dir(fold) / "rows"
        shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True)
        for n, chunk in enumerate(chunks):
            chunk.write_parquet(parts / f"part-{n:05d}.parquet")
            yield chunk

    def row_parts(self, fold: str) -> list[Path]:
        return sorted((self.fold_dir(fold) / "rows").glob("part-*.parquet"))

    def rows(self, fold: str) -> pl.DataFrame:
        return pl.concat([pl.read_parquet(p) for p in self.row_parts(fold)], how="vertical_relaxed")

    # -- helpers ---------------------------------------------------------------------------------

    def _write(self, name: str, payload: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / f"{name}.json").write_text(json.dumps(payload, indent=2))

    def _read(self, name: str) -> dict[str, Any]:
        path = self.root / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the retrain step that writes it has not run")
        return json.loads(path.read_text())


def interactions_at(features_dir: Path, cutoff: datetime) -> pl.DataFrame:
    """The exported interactions snapshot stamped at ``cutoff`` (events strictly before it)."""
    return (
        pl.scan_parquet(Path(features_dir) / "interactions.parquet")
        .filter(pl.col("event_timestamp") == cutoff)
        .collect()
    )


def hidden_at(features_dir: Path, cutoff: datetime) -> dict[str, list[str]]:
    """Each user's hidden items (negative feedback) in the exported user profile snapshot stamped at
    ``cutoff`` (``hidden_item_ids``, sql/user_profile.sql); users who hid nothing are absent."""
    path = Path(features_dir) / "user_profile.parquet"
    if not path.exists():
        return {}
    frame = pl.scan_parquet(path)
    if "hidden_item_ids" not in frame.collect_schema().names():  # exported before hide events existed
        return {}
    rows = (
        frame.filter((pl.col("event_timestamp") == cutoff) & (pl.col("hidden_item_ids").list.len() > 0))
        .select("user_id", "hidden_item_ids")
        .collect()
    )
    return dict(zip(rows["user_id"].to_list(), rows["hidden_item_ids"].to_list(), strict=True))


def fold_interactions(features_dir: Path, fold: Fold) -> pl.DataFrame:
    """The interactions snapshot a fold's sources are fitted on (:meth:`Fold.snapshot_stamp`); empty
    when there is none."""
    stamp = fold.snapshot_stamp(snapshot_stamps(Path(features_dir) / "interactions.parquet"))
    return interactions_at(features_dir, stamp if stamp is not None else fold.cutoff)


def snapshot_stamps(path: Path) -> set[datetime]:
    """The snapshot times (``event_timestamp``) an exported feature table holds; none when it is absent."""
    if not path.exists():
        return set()
    return set(pl.scan_parquet(path).select(pl.col("event_timestamp").unique()).collect().to_series())


def missing_fold_snapshots(features_dir: Path, split: TemporalSplit, tables: Sequence[str]) -> dict[str, list[str]]:
    """Per fold snapshot day (the refit's too), the feature tables with no exported snapshot stamped at
    that fold's cutoff.

    A fold's features are the feature assets' own daily partition for ``Fold.snapshot_day``
    (stamped at the end of that day, the cutoff). A table with no rows at all (say, category
    affinities on data without categories) cannot be told apart from a missing one, so it is not
    reported.
    """
    missing: dict[str, list[str]] = {}
    for table in tables:
        path = Path(features_dir) / f"{table}.parquet"
        stamps = snapshot_stamps(path)
        for fold in split.fitted_folds():
            if (stamps or not path.exists()) and fold.snapshot_stamp(stamps) is None:
                missing.setdefault(fold.snapshot_day, []).append(table)
    return missing
