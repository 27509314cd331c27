"""The live catalog: item updates landed after the served model's item snapshot, applied per request.

The served bundle knows each item's availability as of its item snapshot (``Bundle.items_as_of``).
Item updates reach the landing zone's ``items/`` folder as files, from producers (``recs land
--kind items``, any file landed there) or from ``POST /items``; ingestion loads them into the
warehouse for the next snapshot and training. :class:`LiveCatalog` makes them count at once: every
request first calls :meth:`LiveCatalog.refresh`, which costs one ``stat`` of the folder when nothing
changed and otherwise reads the new files with ingestion's own staging and validation SQL
(``ingest.valid_rows``: a row ingestion would quarantine is ignored here too). For each item the
newest ``updated_at`` wins; a row no newer than the bundle's snapshot is left out (the snapshot
already holds it). :meth:`LiveCatalog.available` is the bundle's availability with those rows
applied, which every filter of the request path uses.

Every worker process refreshes before each request, and a landed file is visible once its atomic
rename is done, so once ``POST /items`` has answered 202 no worker serves an item it marked
unavailable. A folder changed twice within the file system's timestamp granularity keeps one
modification time, so a folder modified less than :data:`UNSETTLED_SECONDS` before the last look is
listed again at the next request. Only availability is live: price and category changes reach
the ranker's features and the category filter with the next model. Items the model has never seen
cannot be served before the next training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from recs_pipeline.data import contract, landing
from recs_pipeline.warehouse import ingest

log = logging.getLogger(__name__)

KIND = "items"
LANDED_NS = "landed_ns"
# A folder modified this recently (seconds) may change again within one timestamp tick: list it again.
UNSETTLED_SECONDS = 0.05


@dataclass(frozen=True)
class ItemUpdates:
    """The newest landed row per item (parallel arrays)."""

    item_ids: np.ndarray  # str
    updated_us: np.ndarray  # int64 microseconds since the epoch (exact: updates are compared)
    available: np.ndarray  # bool
    landed_ns: np.ndarray  # int64: when the row's file landed (its ctime, ns since the epoch)

    @classmethod
    def empty(cls) -> ItemUpdates:
        return cls(
            np.empty(0, dtype=str), np.empty(0, dtype=np.int64), np.empty(0, dtype=bool), np.empty(0, dtype=np.int64)
        )


class LiveCatalog:
    """The landed item updates of ``<landing_dir>/items``, refreshed per request (see the module docstring)."""

    def __init__(self, landing_dir: Path) -> None:
        self.folder = Path(landing_dir) / KIND
        self.landing_dir = Path(landing_dir)
        self.updates = ItemUpdates.empty()
        self.version = 0  # bumped on every change of :attr:`updates`
        self.files = 0
        self.errors: dict[str, str] = {}  # file name -> why it could not be read
        self._seen: set[str] = set()
        self._looked: tuple[int, float] | None = None  # (folder mtime_ns, wall-clock time of the look)
        self._cache: dict[str, tuple[int, np.ndarray]] = {}  # bundle version -> (catalog version, mask)
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> bool:
        """Apply files landed since the last look; True when the updates changed."""
        try:
            stamp = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return False
        looked = self._looked
        if looked is not None and looked[0] == stamp and looked[1] - stamp / 1e9 > UNSETTLED_SECONDS:
            return False
        with self._lock:  # a request arriving while another applies the files waits for them here
            looked_at = time.time()
            fresh = [f for f in landing.scan_landing(self.landing_dir, (KIND,)) if f.name not in self._seen]
            frames = []
            now = datetime.now(UTC)
            for landed in fresh:
                self._seen.add(landed.name)
                try:
                    valid = ingest.valid_rows(self.folder / landed.name, KIND, now=now)
                except Exception as exc:  # ingestion quarantines such a file whole; nothing of it is live
                    self.errors[landed.name] = str(exc).splitlines()[0][:300]
                    log.warning("live catalog: %s not read: %s", landed.name, self.errors[landed.name])
                    continue
                frames.append(valid.with_columns(pl.lit(landed.landed_ns, dtype=pl.Int64).alias(LANDED_NS)))
            self.files += len(fresh)
            rows = [f for f in frames if f.height]
            if rows:
                self.updates = _merge(self.updates, pl.concat(rows, how="vertical_relaxed"))
                self.version += 1
                log.info("live catalog: %d files read, %d items updated in all", len(fresh), len(self.updates.item_ids))
            # only now: a request that finds the folder unchanged since this look finds its files applied
            self._looked = (stamp, looked_at)
            return bool(rows)

    def newest_update(self, item_id: str) -> int | None:
        """The newest applied ``updated_at`` (microseconds since the epoch) of an item, None when no
        update was landed."""
        updates = self.updates
        at = int(np.searchsorted(updates.item_ids, item_id))
        if at < len(updates.item_ids) and updates.item_ids[at] == item_id:
            return int(updates.updated_us[at])
        return None

    def available(
        self,
        bundle_version: str,
        index_positions: Callable[[np.ndarray], np.ndarray],
        base: np.ndarray,
        as_of_unix: float,
        created_unix: float = math.inf,
    ) -> np.ndarray:
        """``base`` (the bundle's availability by index position) with every update applied that the
        bundle cannot hold: newer than its snapshot (``as_of_unix``) or landed after the bundle was
        built (``created_unix``: whatever its ``updated_at``, e.g. an update stamped before a snapshot
        that a future-stamped event pushed ahead). ``index_positions(ids)`` maps item ids to
        positions (-1 = unknown). Cached per bundle until the updates change."""
        version = self.version
        cached = self._cache.get(bundle_version)
        if cached is not None and cached[0] == version:
            return cached[1]
        updates = self.updates
        mask = base
        newer = (updates.updated_us > as_of_unix * 1e6) | (updates.landed_ns > created_unix * 1e9)
        if newer.any():
            pos = index_positions(updates.item_ids[newer])
            known = pos >= 0
            mask = base.copy()
            mask[pos[known]] = updates.available[newer][known]
        self._cache[bundle_version] = (version, mask)
        while len(self._cache) > 8:
            self._cache.pop(next(iter(self._cache)))
        return mask


def _merge(current: ItemUpdates, rows: pl.DataFrame) -> ItemUpdates:
    """The newest row per item of the current updates and ``rows`` (later rows win ties)."""
    old = pl.DataFrame(
        {
            contract.ITEM_ID: current.item_ids,
            "updated_us": current.updated_us,
            contract.AVAILABLE: current.available,
            LANDED_NS: current.landed_ns,
        },
        schema={
            contract.ITEM_ID: pl.String,
            "updated_us": pl.Int64,
            contract.AVAILABLE: pl.Boolean,
            LANDED_NS: pl.Int64,
        },
    )
    new = rows.select(
        pl.col(contract.ITEM_ID).cast(pl.String),
        pl.col(contract.UPDATED_AT).dt.epoch("us").alias("updated_us"),
        pl.col(contract.AVAILABLE).cast(pl.Boolean),
        pl.col(LANDED_NS).cast(pl.Int64),
    )
    merged = (
        pl.concat([old, new])
        .with_row_index("order")
        .sort(["updated_us", "order"])
        .group_by(contract.ITEM_ID, maintain_order=True)
        .last()
        .sort(contract.ITEM_ID)
    )
    return ItemUpdates(
        merged[contract.ITEM_ID].to_numpy().astype(str),
        merged["updated_us"].to_numpy(),
        merged[contract.AVAILABLE].to_numpy(),
        merged[LANDED_NS].to_numpy(),
    )


@dataclass(frozen=True)
class LandedItems:
    """What :func:`land_items` did with a batch: the accepted rows (batch order) and the refused ones."""

    accepted: list[tuple[int, str, int]]  # (batch index, item id, updated_at in microseconds since the epoch)
    rejected: list[tuple[int, str]]  # (batch index, ingestion's reason)
    landed_file: str | None


def land_items(rows: list[dict], landing_dir: Path, *, now: datetime | None = None) -> LandedItems:
    """Check a batch of item updates with ingestion's rules and land the valid ones, as posted, in one
    JSON-lines file (ingestion and the live catalog then read them with the same rules)."""
    now = now or datetime.now(UTC)
    reasons = ingest.check_rows(KIND, rows, now=now)
    rejected = [(i, r) for i, r in enumerate(reasons) if r is not None]
    good = [i for i, reason in enumerate(reasons) if reason is None]
    if not good:
        return LandedItems([], rejected, None)
    name = f"api-items-{now.strftime('%Y%m%dT%H%M%S%fZ')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
    with landing.landing_writer(landing_dir, KIND, name) as tmp:
        tmp.write_text("".join(json.dumps(rows[i], separators=(",", ":")) + "\n" for i in good))
    typed = ingest.valid_rows(Path(landing_dir) / KIND / name, KIND, now=now)
    stamps = typed[contract.UPDATED_AT].dt.epoch("us").to_list()
    ids = typed[contract.ITEM_ID].cast(pl.String).to_list()
    return LandedItems(list(zip(good, ids, stamps, strict=True)), rejected, name)
