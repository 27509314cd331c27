"""Adapters from the real public e-commerce formats to the event and item contracts.

Each adapter converts one source file into contract-format parquet files landed atomically in the
landing zone (events into ``<landing>/events/``, catalog rows into ``<landing>/items/``), where
ingestion picks them up. The heavy work is one DuckDB query per output kind (``sql/adapt_*.sql``,
values bound as parameters), which streams the input, so the full public files (RetailRocket
2.76M events, Taobao ~100M, OTTO ~220M) convert the same way as the samples in ``shared/data``.

Guarantees, for every source:

* **No row is dropped.** Every input row becomes one output row. Values that do not parse survive
  for ingestion to quarantine with a reason: an unknown behaviour passes through as-is in
  ``event_type``, an unparseable or out-of-range timestamp becomes a NULL ``ts``, an empty id stays
  NULL. CSV columns are read as text, so one bad value cannot abort a file.
* **Unreadable lines raise.** A line the reader cannot split into the format's fields (wrong field
  count, unterminated quote, invalid UTF-8, malformed JSON) raises :class:`ValueError` naming the
  file and the line, before any output file is landed. Blank lines carry no row and are skipped.
* **Deterministic ids.** Sources without event ids get
  ``contract.derive_event_id(source, user_id, item_id, raw_type, raw_ts, occurrence)``: the raw
  text of the behaviour and timestamp fields (``''`` for an absent value) and ``occurrence``, the
  0-based index among identical (user, item, raw type, raw ts) rows in file order. Re-converting a
  file gives identical ids, so a re-landed copy is recognised downstream as duplicates.
* **Deterministic files.** Output rows keep file order and are split into files of at most
  ``chunk_rows`` rows named from the source file: ``<source>-<stem>-00000.parquet`` (events) and
  ``<source>-<stem>-items-00000.parquet`` (catalog). Each file is landed atomically as soon as it
  is written; the whole input is parsed before the first file is landed.
* **Contract types.** Columns and types are exactly :data:`contract.EVENT_SCHEMA` /
  :data:`contract.ITEM_SCHEMA` (ids as strings, timestamps UTC in microseconds). ``session_id`` is
  NULL when the source has no sessions (ingestion derives them from a 30-minute gap).

DuckDB spills to a private temporary directory (under ``TMPDIR``) when a conversion does not fit
in memory; the full Taobao and OTTO files need several GB of free disk there. The pipeline's
``RECS_DUCKDB_MEMORY_LIMIT`` and ``RECS_DUCKDB_THREADS`` apply when set (else DuckDB's defaults).
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from recs_pipeline.data import contract
from recs_pipeline.data.landing import landing_writer
from recs_pipeline.warehouse.sql import load_sql, run_script

SOURCES: tuple[str, ...] = ("retailrocket", "taobao", "otto")

DEFAULT_CHUNK_ROWS = 5_000_000

# RetailRocket's item_category.csv keeps no per-row time. Its catalog is stamped with the first
# day of the RetailRocket collection window (the earliest event is 2015-05-03 03:00 UTC), so the
# category is known at every event: point-in-time joins never miss it, yet no time-to-live is
# stretched back to 1970.
RETAILROCKET_CATALOG_UPDATED_AT = datetime(2015, 5, 3, tzinfo=UTC)

# Sample file names inside the shared data folder, per source (see shared/data/README.md).
SHARED_SAMPLES: dict[str, dict[str, str]] = {
    "retailrocket": {"events": "retailrocket/events_sample.csv", "items": "retailrocket/item_category.csv"},
    "taobao": {"events": "taobao/UserBehavior_head.csv"},
    "otto": {"events": "otto/train_sample.jsonl"},
}

_RETAILROCKET_EVENT_HEADERS: tuple[tuple[str, ...], ...] = (
    ("timestamp", "visitorid", "event", "itemid", "transactionid"),  # the public Kaggle events.csv
    ("timestamp", "visitorid", "event", "itemid", "transactionid", "datetime"),  # the shared sample
)
_RETAILROCKET_ITEM_HEADERS: tuple[tuple[str, ...], ...] = (
    ("itemid", "categoryid"),
    ("itemid", "categoryid", "parentid"),
)
_TAOBAO_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "category_id", "behavior", "timestamp")
_OTTO_KEYS = ("session", "events")

_COMPRESSION_SUFFIXES = (".gz",)
_DATA_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json")
_POS = "pos"


@dataclass(frozen=True)
class AdaptedSource:
    """What one adapter run landed.

    Attributes
    ----------
    source : str
        One of :data:`SOURCES`.
    event_files : tuple of Path
        Landed event files, in output order (``<landing>/events/...``).
    item_files : tuple of Path
        Landed catalog files (``<landing>/items/...``); empty when the source has no catalog.
    n_events : int
        Event rows written (equals the input's data rows).
    n_items : int
        Catalog rows written.
    """

    source: str
    event_files: tuple[Path, ...]
    item_files: tuple[Path, ...]
    n_events: int
    n_items: int


# ---------------------------------------------------------------------------------------------
# Public adapters


def adapt_retailrocket(
    events_csv: Path,
    landing_dir: Path,
    *,
    item_category_csv: Path | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> AdaptedSource:
    """Convert RetailRocket ``events.csv`` (and optionally its item categories) and land them.

    Events: header ``timestamp,visitorid,event,itemid,transactionid`` (the public Kaggle file) or
    the same plus ``datetime`` (the shared sample); ``timestamp`` in epoch milliseconds.
    ``view``/``addtocart``/``transaction`` map to ``view``/``add_to_cart``/``purchase``;
    ``user_id`` is ``visitorid``; ``session_id`` is NULL (the source has no sessions);
    ``transactionid`` and ``datetime`` are not part of the contract and are not kept.

    Catalog: every row of ``item_category.csv`` (header ``ItemId,categoryid[,parentid]``) becomes
    one item with its ``category_id``, ``price`` NULL, ``available`` true and ``updated_at`` =
    :data:`RETAILROCKET_CATALOG_UPDATED_AT` (2015-05-03T00:00:00Z, the start of the RetailRocket
    collection window: the file keeps no per-row time). All rows are kept, including items that no
    event mentions: it is a catalog.

    Parameters
    ----------
    events_csv : Path
        The events CSV (plain or ``.gz``).
    landing_dir : Path
        Root of the landing zone.
    item_category_csv : Path, optional
        The item to category CSV; without it no catalog is landed.
    chunk_rows : int, default 5,000,000
        Maximum rows per output file.
    threads, memory_limit : optional
        DuckDB's ``threads`` and ``memory_limit`` for the conversion (``Settings.duckdb_threads``
        and ``Settings.duckdb_memory_limit``); DuckDB's defaults when None.

    Returns
    -------
    AdaptedSource
        The landed files and row counts.

    Raises
    ------
    FileNotFoundError
        When an input file does not exist.
    ValueError
        When a header does not match the format, a line cannot be parsed (the message names the
        file and line), or ``chunk_rows`` is not positive.
    """
    source = "retailrocket"
    _check_chunk_rows(chunk_rows)
    events_csv = _existing_file(events_csv, "RetailRocket events CSV")
    header = _csv_header(events_csv)
    if header not in _RETAILROCKET_EVENT_HEADERS:
        raise ValueError(
            f"{events_csv}: not a RetailRocket events.csv: header is {','.join(header) or '(empty)'!r}, "
            f"expected {','.join(_RETAILROCKET_EVENT_HEADERS[0])!r} (optionally followed by ',datetime'). "
            "Pass the events.csv of the Kaggle retailrocket/ecommerce-dataset."
        )
    items_csv = None
    items_header: tuple[str, ...] = ()
    if item_category_csv is not None:
        items_csv = _existing_file(item_category_csv, "RetailRocket item category CSV")
        items_header = _csv_header(items_csv)
        if items_header not in _RETAILROCKET_ITEM_HEADERS:
            raise ValueError(
                f"{items_csv}: not a RetailRocket item category CSV: header is "
                f"{','.join(items_header) or '(empty)'!r}, expected 'ItemId,categoryid[,parentid]'. "
                "Build it from item_properties (property 'categoryid'); see docs/DATA_SOURCES.md."
            )
    base_name = f"{source}-{_stem(events_csv)}"
    with _Converter(landing_dir, chunk_rows, threads=threads, memory_limit=memory_limit) as conv:
        events = conv.stage(
            "adapt_retailrocket_events",
            {"path": str(events_csv), "source": source, "columns": _varchar_columns(header)},
            input_path=events_csv,
            kind="events",
        )
        items = None
        if items_csv is not None:
            items = conv.stage(
                "adapt_retailrocket_items",
                {
                    "path": str(items_csv),
                    "columns": _varchar_columns(items_header),
                    "updated_at": RETAILROCKET_CATALOG_UPDATED_AT,
                },
                input_path=items_csv,
                kind="items",
            )
        event_files, n_events = conv.land(events, kind="events", base_name=base_name)
        item_files: tuple[Path, ...] = ()
        n_items = 0
        if items is not None and items_csv is not None:
            item_files, n_items = conv.land(items, kind="items", base_name=f"{source}-{_stem(items_csv)}-items")
    return AdaptedSource(source, event_files, item_files, n_events, n_items)


def adapt_taobao(
    user_behavior_csv: Path,
    landing_dir: Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> AdaptedSource:
    """Convert Taobao ``UserBehavior.csv`` into events plus a derived catalog and land them.

    Input: no header, columns ``user_id,item_id,category_id,behavior,timestamp`` (epoch seconds).
    A first line that is exactly those names is taken as a header and skipped.
    ``pv``/``cart``/``buy``/``fav`` map to ``view``/``add_to_cart``/``purchase``/``favorite``;
    ``session_id`` is NULL (the source has no sessions).

    Catalog (Taobao ships none): one row per item id seen in the file, with the category of the
    item's latest event (by timestamp, then file position), ``price`` NULL, ``available`` true and
    ``updated_at`` = the item's first event time. Rows without an item id describe no item and
    only appear among the events.

    Parameters
    ----------
    user_behavior_csv : Path
        The UserBehavior CSV (plain or ``.gz``; unzip the official ``.zip`` first).
    landing_dir : Path
        Root of the landing zone.
    chunk_rows : int, default 5,000,000
        Maximum rows per output file.
    threads, memory_limit : optional
        DuckDB's ``threads`` and ``memory_limit`` for the conversion (``Settings.duckdb_threads``
        and ``Settings.duckdb_memory_limit``); DuckDB's defaults when None.

    Returns
    -------
    AdaptedSource
        The landed files and row counts.

    Raises
    ------
    FileNotFoundError
        When the input file does not exist.
    ValueError
        When the first line does not have the format's 5 fields, a line cannot be parsed (the
        message names the file and line), or ``chunk_rows`` is not positive.
    """
    source = "taobao"
    _check_chunk_rows(chunk_rows)
    path = _existing_file(user_behavior_csv, "Taobao UserBehavior CSV")
    first = _csv_header(path)
    if len(first) != len(_TAOBAO_COLUMNS):
        raise ValueError(
            f"{path}: not a Taobao UserBehavior.csv: its first line has {len(first)} fields "
            f"({','.join(first) or '(empty)'!r}), expected 5 without a header: "
            f"{','.join(_TAOBAO_COLUMNS)}. Pass the unzipped UserBehavior.csv of Tianchi dataset 649."
        )
    has_header = first == _TAOBAO_COLUMNS
    stem = _stem(path)
    with _Converter(landing_dir, chunk_rows, threads=threads, memory_limit=memory_limit) as conv:
        events = conv.stage(
            "adapt_taobao_events",
            {"path": str(path), "source": source, "header": has_header},
            input_path=path,
            kind="events",
        )
        items = conv.stage(
            "adapt_taobao_items", {"path": str(path), "header": has_header}, input_path=path, kind="items"
        )
        event_files, n_events = conv.land(events, kind="events", base_name=f"{source}-{stem}")
        item_files, n_items = conv.land(items, kind="items", base_name=f"{source}-{stem}-items")
    return AdaptedSource(source, event_files, item_files, n_events, n_items)


def adapt_otto(
    jsonl: Path,
    landing_dir: Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> AdaptedSource:
    """Convert an OTTO sessions jsonl file into events and land them.

    Input: one session per line, ``{"session": int, "events": [{"aid": int, "ts": ms,
    "type": "clicks"|"carts"|"orders"}]}``. Sessions are anonymous, so each is its own user:
    ``user_id`` = ``session_id`` = ``"otto-" + session``. ``clicks``/``carts``/``orders`` map to
    ``view``/``add_to_cart``/``purchase``; ``item_id`` is ``aid``. A line whose ``events`` is
    missing or null becomes one event with NULL item, type and ts (quarantined by ingestion, not
    lost). OTTO has no category information, so no catalog is landed (``item_files`` is empty).

    Parameters
    ----------
    jsonl : Path
        The jsonl file (plain or ``.gz``), e.g. ``train.jsonl`` or ``test.jsonl``.
    landing_dir : Path
        Root of the landing zone.
    chunk_rows : int, default 5,000,000
        Maximum rows per output file.
    threads, memory_limit : optional
        DuckDB's ``threads`` and ``memory_limit`` for the conversion (``Settings.duckdb_threads``
        and ``Settings.duckdb_memory_limit``); DuckDB's defaults when None.

    Returns
    -------
    AdaptedSource
        The landed files and row counts (``n_items`` is 0).

    Raises
    ------
    FileNotFoundError
        When the input file does not exist.
    ValueError
        When the first line is not an OTTO session object, a line is malformed JSON (the message
        names the file and line), or ``chunk_rows`` is not positive.
    """
    source = "otto"
    _check_chunk_rows(chunk_rows)
    path = _existing_file(jsonl, "OTTO sessions jsonl")
    _check_otto_first_line(path)
    with _Converter(landing_dir, chunk_rows, threads=threads, memory_limit=memory_limit) as conv:
        events = conv.stage("adapt_otto_events", {"path": str(path), "source": source}, input_path=path, kind="events")
        event_files, n_events = conv.land(events, kind="events", base_name=f"{source}-{_stem(path)}")
    return AdaptedSource(source, event_files, (), n_events, 0)


def adapt_shared_sample(
    source: str,
    shared_data_dir: Path,
    landing_dir: Path,
    *,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> AdaptedSource:
    """Convert the real sample of ``source`` found in the shared data folder and land it.

    The layout is that of ``shared/data/README.md``: ``retailrocket/events_sample.csv`` with
    ``retailrocket/item_category.csv``, ``taobao/UserBehavior_head.csv`` and
    ``otto/train_sample.jsonl``.

    Parameters
    ----------
    source : str
        One of :data:`SOURCES`.
    shared_data_dir : Path
        The shared data folder (``Settings.shared_data``).
    landing_dir : Path
        Root of the landing zone.
    threads, memory_limit : optional
        DuckDB's limits for the conversion, as in :func:`adapt_retailrocket`.

    Returns
    -------
    AdaptedSource
        The landed files and row counts.

    Raises
    ------
    ValueError
        When ``source`` is not one of :data:`SOURCES`.
    FileNotFoundError
        When the folder or a sample file is absent.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    root = Path(shared_data_dir)
    files = {role: root / rel for role, rel in SHARED_SAMPLES[source].items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"the {source} sample is missing: {', '.join(missing)}. The real samples live in the shared "
            f"data folder ({root}; set RECS_SHARED_DATA to point elsewhere), laid out as in its README.md; "
            f"to convert a full public file use the adapter directly (see docs/DATA_SOURCES.md)."
        )
    if source == "retailrocket":
        return adapt_retailrocket(
            files["events"], landing_dir, item_category_csv=files["items"], threads=threads, memory_limit=memory_limit
        )
    if source == "taobao":
        return adapt_taobao(files["events"], landing_dir, threads=threads, memory_limit=memory_limit)
    return adapt_otto(files["events"], landing_dir, threads=threads, memory_limit=memory_limit)


# ---------------------------------------------------------------------------------------------
# Conversion machinery


class _Converter:
    """A private DuckDB connection that runs adapter queries and lands their output in chunks."""

    def __init__(self, landing_dir: Path, chunk_rows: int, *, threads: int | None, memory_limit: str | None) -> None:
        self.landing_dir = Path(landing_dir)
        self.chunk_rows = chunk_rows
        self.limits: dict[str, str | int] = {
            k: v for k, v in (("threads", threads), ("memory_limit", memory_limit)) if v is not None
        }

    def __enter__(self) -> _Converter:
        self._spill = tempfile.TemporaryDirectory(prefix="recs-adapt-")
        self.con = duckdb.connect(":memory:", config={"temp_directory": self._spill.name, **self.limits})
        self.con.execute("SET enable_progress_bar = false").fetchall()
        run_script(self.con, "adapt_macros")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.con.close()
        finally:
            self._spill.cleanup()

    def stage(self, sql_name: str, params: Mapping[str, Any], *, input_path: Path, kind: str) -> str:
        """Run ``sql/<sql_name>.sql`` over the whole input into a table; returns the table's name.

        The query returns the contract columns of ``kind`` plus ``pos`` (1..n, file order).
        Materialising (DuckDB spills to disk when needed) makes every parse error surface here,
        so adapters stage all their outputs before landing any file.
        """
        table = f"converted_{kind}"
        try:
            self.con.sql(load_sql(sql_name), params=dict(params)).to_table(table)
        except duckdb.Error as e:
            raise _read_error(input_path, e) from e
        return table

    def land(self, table: str, *, kind: str, base_name: str) -> tuple[tuple[Path, ...], int]:
        """Land a staged table as ``<kind>/<base_name>-<chunk:05d>.parquet`` files in file order."""
        columns = list(contract.EVENT_COLUMNS if kind == "events" else contract.ITEM_COLUMNS)
        rel = self.con.table(table)
        n_rows, max_pos = rel.aggregate(f"count(*), coalesce(max({_POS}), 0)").fetchall()[0]
        if n_rows != max_pos:  # the queries number rows 1..n; anything else is a bug here
            raise RuntimeError(f"{table}: row positions are not 1..{n_rows} (max {max_pos})")
        files: list[Path] = []
        pos = duckdb.ColumnExpression(_POS)
        for index, low in enumerate(range(0, n_rows, self.chunk_rows)):
            high = low + self.chunk_rows
            chunk = (
                rel.filter((pos > duckdb.ConstantExpression(low)) & (pos <= duckdb.ConstantExpression(high)))
                .order(_POS)
                .select(*columns)
            )
            name = f"{base_name}-{index:05d}.parquet"
            with landing_writer(self.landing_dir, kind, name) as tmp:
                chunk.write_parquet(str(tmp), compression="zstd")
            files.append(self.landing_dir / kind / name)
        self.con.execute(f"DROP TABLE {table}").fetchall()
        return tuple(files), int(n_rows)


def _read_error(path: Path, error: duckdb.Error) -> ValueError:
    """A ValueError naming the input file and, when it can be found, the offending line."""
    text = str(error)
    # The first paragraph says what was wrong; DuckDB's "Possible fixes" are options of its own
    # reader that the adapters deliberately do not expose (they would skip or pad rows).
    detail = re.split(r"\n\s*(?:Possible (?:fixes|Solution)|Try setting)", text.split("\n\n", 1)[0])[0].strip()
    where = ""
    if match := re.search(r"CSV Error on Line: (\d+)", text):
        where = f" line {match.group(1)}"
    elif match := re.search(r"JSON .* in line (\d+)", text):
        where = f" line {_bad_json_line(path, int(match.group(1)))}"
    return ValueError(
        f"{path}:{where} cannot be read: {detail}\n"
        "Nothing was landed. The adapters never skip unreadable lines; fix or remove the line and rerun."
    )


def _bad_json_line(path: Path, reported: int) -> int:
    """The malformed line near the one DuckDB reports (its JSON reader counts one line too many)."""
    candidates = {}
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if number >= reported - 1:
                candidates[number] = line
            if number >= reported:
                break
    for number, line in sorted(candidates.items()):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError:
            return number
    return reported


# ---------------------------------------------------------------------------------------------
# Input checks


def _check_chunk_rows(chunk_rows: int) -> None:
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")


def _existing_file(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} not found: {path}. Download the public file (see docs/DATA_SOURCES.md) and pass its path."
        )
    return path.resolve()


def _first_line(path: Path) -> str:
    """The first non-blank line of a (possibly gzip-compressed) text file, without line ending."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
            for line in f:
                if line.strip():
                    return line.rstrip("\r\n")
    except (UnicodeDecodeError, OSError) as e:
        raise ValueError(f"{path}: cannot read the first line as UTF-8 text ({e})") from e
    return ""


def _csv_header(path: Path) -> tuple[str, ...]:
    """The first line's comma-separated fields, stripped and lower-cased (``()`` when empty)."""
    line = _first_line(path)
    if not line:
        return ()
    return tuple(field.strip().strip('"').strip().lower() for field in line.split(","))


def _check_otto_first_line(path: Path) -> None:
    line = _first_line(path)
    try:
        doc = json.loads(line) if line else None
    except json.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict) or not all(key in doc for key in _OTTO_KEYS):
        shown = line[:120] + ("..." if len(line) > 120 else "")
        raise ValueError(
            f"{path}: not an OTTO sessions jsonl: the first line should be an object with keys "
            f'"session" and "events", found {shown or "(empty file)"!r}. '
            "Pass train.jsonl or test.jsonl of the otto-de/recsys-dataset."
        )


def _varchar_columns(header: tuple[str, ...]) -> dict[str, str]:
    return {name: "VARCHAR" for name in header}


def _stem(path: Path) -> str:
    """File name without compression and data suffixes, safe for a landing file name."""
    name = path.name
    for suffixes in (_COMPRESSION_SUFFIXES, _DATA_SUFFIXES):
        for suffix in suffixes:
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")
    return name or "file"
