"""Adapters from RetailRocket, Taobao and OTTO to the contract.

Golden tests on tiny fixtures written to tmp_path (exact expected rows, bad rows carried through,
clear errors), a property test that the SQL event ids equal ``contract.derive_event_id``, and
checks on the real samples in ``../shared/data`` (the ``shared_data`` fixture skips when the folder
is absent, and fails instead when ``CI=true``).
"""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recs_pipeline.data import contract
from recs_pipeline.data.adapters import (
    RETAILROCKET_CATALOG_UPDATED_AT,
    SOURCES,
    AdaptedSource,
    adapt_otto,
    adapt_retailrocket,
    adapt_shared_sample,
    adapt_taobao,
)

RR_HEADER = "timestamp,visitorid,event,itemid,transactionid,datetime"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _read(files: Iterable[Path], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    files = list(files)
    if not files:
        return pl.DataFrame(schema=schema)
    return pl.concat([pl.read_parquet(f) for f in files])


def _events(result: AdaptedSource) -> pl.DataFrame:
    return _read(result.event_files, contract.EVENT_SCHEMA)


def _items(result: AdaptedSource) -> pl.DataFrame:
    return _read(result.item_files, contract.ITEM_SCHEMA)


def _reference_ids(source: str, keys: Iterable[tuple[str | None, ...]]) -> list[str]:
    """derive_event_id over (user, item, raw type, raw ts) in file order, absent values as ''."""
    seen: Counter[tuple[str, ...]] = Counter()
    ids = []
    for key in keys:
        key = tuple("" if v is None else v for v in key)
        ids.append(contract.derive_event_id(source, *key, seen[key]))
        seen[key] += 1
    return ids


def _utc(ms: int | None = None, *, s: int | None = None) -> datetime:
    if s is not None:
        return datetime.fromtimestamp(s, tz=UTC)
    assert ms is not None
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _landed_names(landing: Path) -> list[str]:
    return sorted(p.name for p in landing.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------
# Golden fixtures


def test_retailrocket_golden(tmp_path: Path) -> None:
    events = _write(
        tmp_path / "events.csv",
        f"{RR_HEADER}\n"
        "1433193132535,7,view,100,,2015-06-01 21:12:12.535\n"
        "1433193132535,7,view,100,,2015-06-01 21:12:12.535\n"  # identical repeat: occurrence 1
        "1433193140000,7,addtocart,100,,\n"
        "1433193150000,8,transaction,200,4000,\n"
        "1433193160000,8,refund,200,,\n"  # unknown behaviour: passed through
        "notatime,9,view,300,,\n"  # unparseable timestamp: NULL ts
        "99999999999999999999,9,view,300,,\n"  # out of range: NULL ts, not an error
        ",,view,,,\n",  # missing ids: NULL
    )
    items = _write(tmp_path / "item_category.csv", "ItemId,categoryid,parentid\n100,11,1\n200,,2\n999,99,9\n")
    landing = tmp_path / "landing"
    result = adapt_retailrocket(events, landing, item_category_csv=items)

    keys = [
        ("7", "100", "view", "1433193132535"),
        ("7", "100", "view", "1433193132535"),
        ("7", "100", "addtocart", "1433193140000"),
        ("8", "200", "transaction", "1433193150000"),
        ("8", "200", "refund", "1433193160000"),
        ("9", "300", "view", "notatime"),
        ("9", "300", "view", "99999999999999999999"),
        (None, None, "view", None),
    ]
    expected = pl.DataFrame(
        {
            "event_id": _reference_ids("retailrocket", keys),
            "user_id": ["7", "7", "7", "8", "8", "9", "9", None],
            "item_id": ["100", "100", "100", "200", "200", "300", "300", None],
            "event_type": ["view", "view", "add_to_cart", "purchase", "refund", "view", "view", "view"],
            "ts": [
                _utc(1433193132535),
                _utc(1433193132535),
                _utc(1433193140000),
                _utc(1433193150000),
                _utc(1433193160000),
                None,
                None,
                None,
            ],
            "session_id": [None] * 8,
        },
        schema=contract.EVENT_SCHEMA,
    )
    assert result == AdaptedSource(
        "retailrocket",
        (landing / "events" / "retailrocket-events-00000.parquet",),
        (landing / "items" / "retailrocket-item_category-items-00000.parquet",),
        8,
        3,
    )
    assert _events(result).to_dicts() == expected.to_dicts()
    assert _events(result).schema == expected.schema
    catalog_time = RETAILROCKET_CATALOG_UPDATED_AT
    assert _items(result).to_dicts() == [
        {"item_id": "100", "category_id": "11", "price": None, "available": True, "updated_at": catalog_time},
        {"item_id": "200", "category_id": None, "price": None, "available": True, "updated_at": catalog_time},
        {"item_id": "999", "category_id": "99", "price": None, "available": True, "updated_at": catalog_time},
    ]
    assert _items(result).schema == pl.Schema(contract.ITEM_SCHEMA)
    assert result.event_files[0].name == "retailrocket-events-00000.parquet"
    assert _landed_names(landing) == sorted(p.name for p in result.event_files + result.item_files)


def test_retailrocket_kaggle_header_without_datetime_and_no_catalog(tmp_path: Path) -> None:
    kaggle_header = "timestamp,visitorid,event,itemid,transactionid"
    events = _write(tmp_path / "events.csv", f"{kaggle_header}\n1433193132535,7,view,100,\n")
    result = adapt_retailrocket(events, tmp_path / "landing")
    assert (result.n_events, result.n_items, result.item_files) == (1, 0, ())
    row = _events(result).row(0, named=True)
    assert row["event_id"] == contract.derive_event_id("retailrocket", "7", "100", "view", "1433193132535", 0)
    assert row["ts"] == _utc(1433193132535)


TAOBAO_ROWS = (
    "1,100,10,pv,1511544070\n"
    "1,100,10,pv,1511544070\n"  # identical repeat: occurrence 1
    "2,100,11,buy,1511544100\n"  # latest event of item 100: category 11
    "2,200,20,fav,1511540000\n"
    "3,200,21,cart,notatime\n"  # bad ts: NULL, and its category counts as oldest
    "3,300,,click,1511544200\n"  # unknown behaviour, no category
    ",400,40,pv,1511544300\n"  # missing user
    "4,,50,pv,1511544400\n"  # missing item: an event, but no catalog row
)


def _taobao_expected() -> tuple[list[dict], list[dict]]:
    keys = [
        ("1", "100", "pv", "1511544070"),
        ("1", "100", "pv", "1511544070"),
        ("2", "100", "buy", "1511544100"),
        ("2", "200", "fav", "1511540000"),
        ("3", "200", "cart", "notatime"),
        ("3", "300", "click", "1511544200"),
        (None, "400", "pv", "1511544300"),
        ("4", None, "pv", "1511544400"),
    ]
    ids = _reference_ids("taobao", keys)
    types = ["view", "view", "purchase", "favorite", "add_to_cart", "click", "view", "view"]
    events = [
        {
            "event_id": ids[i],
            "user_id": keys[i][0],
            "item_id": keys[i][1],
            "event_type": types[i],
            "ts": None if keys[i][3] == "notatime" else _utc(s=int(keys[i][3])),
            "session_id": None,
        }
        for i in range(len(keys))
    ]
    items = [
        {"item_id": "100", "category_id": "11", "price": None, "available": True, "updated_at": _utc(s=1511544070)},
        {"item_id": "200", "category_id": "20", "price": None, "available": True, "updated_at": _utc(s=1511540000)},
        {"item_id": "300", "category_id": None, "price": None, "available": True, "updated_at": _utc(s=1511544200)},
        {"item_id": "400", "category_id": "40", "price": None, "available": True, "updated_at": _utc(s=1511544300)},
    ]
    return events, items


@pytest.mark.parametrize("header", [False, True], ids=["no-header", "header"])
def test_taobao_golden(tmp_path: Path, header: bool) -> None:
    text = ("user_id,item_id,category_id,behavior,timestamp\n" if header else "") + TAOBAO_ROWS
    landing = tmp_path / "landing"
    result = adapt_taobao(_write(tmp_path / "UserBehavior.csv", text), landing)
    expected_events, expected_items = _taobao_expected()
    assert (result.n_events, result.n_items) == (8, 4)
    assert [p.name for p in result.event_files] == ["taobao-UserBehavior-00000.parquet"]
    assert [p.name for p in result.item_files] == ["taobao-UserBehavior-items-00000.parquet"]
    assert _events(result).to_dicts() == expected_events
    assert _items(result).to_dicts() == expected_items
    assert _events(result).schema == pl.Schema(contract.EVENT_SCHEMA)
    assert _items(result).schema == pl.Schema(contract.ITEM_SCHEMA)


def test_taobao_gzip_input_gives_the_same_rows(tmp_path: Path) -> None:
    gz = tmp_path / "UserBehavior.csv.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(TAOBAO_ROWS)
    result = adapt_taobao(gz, tmp_path / "landing")
    assert [p.name for p in result.event_files] == ["taobao-UserBehavior-00000.parquet"]
    assert _events(result).to_dicts() == _taobao_expected()[0]


def test_otto_golden(tmp_path: Path) -> None:
    lines = [
        {
            "session": 0,
            "events": [
                {"aid": 11, "ts": 1659304800025, "type": "clicks"},
                {"aid": 11, "ts": 1659304800025, "type": "clicks"},  # identical repeat: occurrence 1
                {"aid": 12, "ts": 1659304900000, "type": "carts"},
                {"aid": 12, "ts": 1659305000000, "type": "orders"},
            ],
        },
        {
            "session": 1,
            "events": [
                {"aid": 13, "ts": "soon", "type": "clicks"},  # bad ts
                {"aid": 14, "ts": 1659305100000, "type": "wishlist"},  # unknown type
                {"ts": 1659305200000, "type": "clicks"},  # no aid
            ],
        },
        {"session": 2},  # no events list: one all-NULL event, quarantined downstream
        {"session": 3, "events": []},  # an empty session has no events
    ]
    path = _write(tmp_path / "train.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    result = adapt_otto(path, tmp_path / "landing")
    keys = [
        ("otto-0", "11", "clicks", "1659304800025"),
        ("otto-0", "11", "clicks", "1659304800025"),
        ("otto-0", "12", "carts", "1659304900000"),
        ("otto-0", "12", "orders", "1659305000000"),
        ("otto-1", "13", "clicks", "soon"),
        ("otto-1", "14", "wishlist", "1659305100000"),
        ("otto-1", None, "clicks", "1659305200000"),
        ("otto-2", None, None, None),
    ]
    ids = _reference_ids("otto", keys)
    types = ["view", "view", "add_to_cart", "purchase", "view", "wishlist", "view", None]
    expected = [
        {
            "event_id": ids[i],
            "user_id": keys[i][0],
            "item_id": keys[i][1],
            "event_type": types[i],
            "ts": None if keys[i][3] in (None, "soon") else _utc(int(keys[i][3])),
            "session_id": keys[i][0],
        }
        for i in range(len(keys))
    ]
    assert (result.n_events, result.n_items, result.item_files) == (8, 0, ())
    assert [p.name for p in result.event_files] == ["otto-train-00000.parquet"]
    assert _events(result).to_dicts() == expected
    assert _events(result).schema == pl.Schema(contract.EVENT_SCHEMA)


def test_chunks_split_by_file_position(tmp_path: Path) -> None:
    path = _write(tmp_path / "UserBehavior.csv", TAOBAO_ROWS)
    whole = adapt_taobao(path, tmp_path / "one")
    split = adapt_taobao(path, tmp_path / "many", chunk_rows=3)
    assert [p.name for p in split.event_files] == [f"taobao-UserBehavior-{i:05d}.parquet" for i in range(3)]
    assert [pl.read_parquet(f).height for f in split.event_files] == [3, 3, 2]
    assert [pl.read_parquet(f).height for f in split.item_files] == [3, 1]
    assert _events(split).equals(_events(whole))
    assert _items(split).equals(_items(whole))
    assert (split.n_events, split.n_items) == (whole.n_events, whole.n_items)


def test_reconversion_is_byte_identical(tmp_path: Path) -> None:
    path = _write(tmp_path / "UserBehavior.csv", TAOBAO_ROWS)
    first = adapt_taobao(path, tmp_path / "a")
    second = adapt_taobao(path, tmp_path / "b")
    for a, b in zip(first.event_files + first.item_files, second.event_files + second.item_files, strict=True):
        assert a.read_bytes() == b.read_bytes()


_field = st.sampled_from(["", "1", "2", "x"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_field, _field, _field, st.sampled_from(["pv", "buy", "", "zz"]), _field), max_size=30))
def test_sql_ids_equal_derive_event_id(tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, ...]]) -> None:
    """Random rows drawn from a tiny alphabet (so repeats and empty fields are common)."""
    folder = tmp_path_factory.mktemp("prop")
    path = _write(folder / "UserBehavior.csv", "".join(",".join(r) + "\n" for r in rows))
    if not rows:  # an empty file is not a Taobao file
        with pytest.raises(ValueError, match="first line has 0 fields"):
            adapt_taobao(path, folder / "landing")
        return
    result = adapt_taobao(path, folder / "landing")
    ids = _events(result)["event_id"].to_list()
    assert ids == _reference_ids("taobao", [(u, i, b, t) for u, i, _c, b, t in rows])
    assert len(set(ids)) == len(ids) == result.n_events == len(rows)


# --------------------------------------------------------------------------------------------
# Errors


def test_missing_files_raise_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="events CSV not found"):
        adapt_retailrocket(tmp_path / "nope.csv", tmp_path / "landing")
    events = _write(tmp_path / "events.csv", f"{RR_HEADER}\n")
    with pytest.raises(FileNotFoundError, match="item category CSV not found"):
        adapt_retailrocket(events, tmp_path / "landing", item_category_csv=tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="UserBehavior CSV not found"):
        adapt_taobao(tmp_path / "nope.csv", tmp_path / "landing")
    with pytest.raises(FileNotFoundError, match="OTTO sessions jsonl not found"):
        adapt_otto(tmp_path / "nope.jsonl", tmp_path / "landing")
    with pytest.raises(FileNotFoundError, match="the taobao sample is missing.*RECS_SHARED_DATA"):
        adapt_shared_sample("taobao", tmp_path / "no-shared-data", tmp_path / "landing")
    with pytest.raises(ValueError, match="unknown source"):
        adapt_shared_sample("amazon", tmp_path, tmp_path / "landing")
    assert not (tmp_path / "landing").exists()


def test_files_of_the_wrong_format_are_rejected(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    taobao = _write(tmp_path / "UserBehavior.csv", TAOBAO_ROWS)
    rr = _write(tmp_path / "events.csv", f"{RR_HEADER}\n1433193132535,7,view,100,,\n")
    with pytest.raises(ValueError, match="not a RetailRocket events.csv"):
        adapt_retailrocket(taobao, landing)
    with pytest.raises(ValueError, match="not a RetailRocket item category CSV"):
        adapt_retailrocket(rr, landing, item_category_csv=rr)
    with pytest.raises(ValueError, match="not a Taobao UserBehavior.csv: its first line has 6 fields"):
        adapt_taobao(rr, landing)
    with pytest.raises(ValueError, match="not an OTTO sessions jsonl"):
        adapt_otto(taobao, landing)
    with pytest.raises(ValueError, match="not an OTTO sessions jsonl"):
        adapt_otto(_write(tmp_path / "x.jsonl", '{"aid": 1}\n'), landing)
    with pytest.raises(ValueError, match="chunk_rows must be a positive integer"):
        adapt_taobao(taobao, landing, chunk_rows=0)
    assert not landing.exists()


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("UserBehavior.csv", "1,100,10,pv,1511544070\n2,200,20,pv,1511544071,extra\n", 2),
        ("UserBehavior.csv", "1,100,10,pv,1511544070\n2,200,20\n", 2),
        ("UserBehavior.csv", '1,100,10,pv,1511544070\n2,"200,20,pv,1511544071\n', 2),
        ("events.csv", f"{RR_HEADER}\n1433193132535,7,view,100,,\n1433193132535,7,view\n", 3),
        ("train.jsonl", '{"session":1,"events":[]}\n{"session":2,"events":[{"aid":1\n', 2),
        ("train.jsonl", '{"session":1,"events":[]}\n{"session":2,"events":[]}\n{"session":3,"events":[x]}\n', 3),
        ("train.jsonl", '{"session":1,"events":[]}\n{"session":2,"events":5}\n', 2),
    ],
    ids=["many-fields", "few-fields", "open-quote", "retailrocket", "otto-2", "otto-last", "otto-not-a-list"],
)
def test_unreadable_lines_raise_naming_file_and_line(tmp_path: Path, name: str, text: str, line: int) -> None:
    path = _write(tmp_path / name, text)
    adapt = {"UserBehavior.csv": adapt_taobao, "events.csv": adapt_retailrocket, "train.jsonl": adapt_otto}[name]
    with pytest.raises(ValueError, match="never skip unreadable lines") as info:
        adapt(path, tmp_path / "landing", chunk_rows=1)
    assert f"{path}: line {line} cannot be read" in str(info.value)
    assert "Possible fixes" not in str(info.value) and "Try setting" not in str(info.value)
    # Nothing became visible, not even the chunks before the bad line, and no temp file is left.
    assert _landed_names(tmp_path / "landing") == []


# --------------------------------------------------------------------------------------------
# The real samples in ../shared/data

SAMPLE_COUNTS = {
    # source: (events, catalog rows, event types) -- the README's numbers, computed exactly.
    "retailrocket": (9_385, 229_256, {"view": 9_076, "add_to_cart": 263, "purchase": 46}),
    "taobao": (84_475, 55_368, {"view": 75_872, "add_to_cart": 4_497, "favorite": 2_356, "purchase": 1_750}),
    "otto": (862, 0, {"view": 800, "add_to_cart": 52, "purchase": 10}),
}
SAMPLE_RANGES = {  # first and last event day (UTC), as in the README
    "retailrocket": ("2015-05-03", "2015-09-18"),
    "taobao": ("2017-09-11", "2017-12-03"),
    "otto": ("2022-07-31", "2022-08-28"),
}


@pytest.fixture(scope="module")
def converted(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[AdaptedSource, ...]]:
    """Each sample converted twice, into two landing zones."""
    out = {}
    for source in SOURCES:
        runs = tuple(adapt_shared_sample(source, shared_data, tmp_path_factory.mktemp(f"{source}-{i}")) for i in (1, 2))
        out[source] = runs
    return out


@pytest.mark.parametrize("source", SOURCES)
def test_sample_counts_schema_and_ids(converted: dict, source: str) -> None:
    result, rerun = converted[source]
    n_events, n_items, type_counts = SAMPLE_COUNTS[source]
    events, items = _events(result), _items(result)
    assert (result.n_events, result.n_items) == (n_events, n_items)
    assert (events.height, items.height) == (n_events, n_items)
    assert dict(events["event_type"].value_counts().iter_rows()) == type_counts
    assert events.schema == pl.Schema(contract.EVENT_SCHEMA)
    if result.item_files:
        assert items.schema == pl.Schema(contract.ITEM_SCHEMA)
        assert items["item_id"].n_unique() == n_items
    assert events["event_id"].n_unique() == n_events
    assert events.select(contract.REQUIRED_EVENT_COLUMNS).null_count().sum_horizontal().item() == 0
    first, last = SAMPLE_RANGES[source]
    assert str(events["ts"].min().date()) == first and str(events["ts"].max().date()) == last
    assert _events(rerun)["event_id"].to_list() == events["event_id"].to_list()
    assert [p.name for p in rerun.event_files] == [p.name for p in result.event_files]


def _sample_keys(shared_data: Path, source: str) -> list[tuple[str, ...]]:
    if source == "retailrocket":
        with open(shared_data / "retailrocket" / "events_sample.csv", newline="") as f:
            return [(r["visitorid"], r["itemid"], r["event"], r["timestamp"]) for r in csv.DictReader(f)]
    if source == "taobao":
        with open(shared_data / "taobao" / "UserBehavior_head.csv", newline="") as f:
            return [(u, i, b, t) for u, i, _c, b, t in csv.reader(f)]
    keys = []
    with open(shared_data / "otto" / "train_sample.jsonl") as f:
        for line in f:
            session = json.loads(line)
            keys += [(f"otto-{session['session']}", str(e["aid"]), e["type"], str(e["ts"])) for e in session["events"]]
    return keys


@pytest.mark.parametrize("source", SOURCES)
def test_sample_ids_equal_derive_event_id_in_file_order(converted: dict, shared_data: Path, source: str) -> None:
    keys = _sample_keys(shared_data, source)
    events = _events(converted[source][0])
    assert events["event_id"].to_list() == _reference_ids(source, keys)
    assert events["user_id"].to_list() == [k[0] for k in keys]
    assert events["item_id"].to_list() == [k[1] for k in keys]


def test_retailrocket_sample_catalog_is_the_whole_file(converted: dict, shared_data: Path) -> None:
    items = _items(converted["retailrocket"][0])
    with open(shared_data / "retailrocket" / "item_category.csv", newline="") as f:
        rows = [(r["ItemId"], r["categoryid"]) for r in csv.DictReader(f)]
    assert list(zip(items["item_id"].to_list(), items["category_id"].to_list(), strict=True)) == rows
    assert items["updated_at"].unique().to_list() == [RETAILROCKET_CATALOG_UPDATED_AT]


def test_a_bad_catalog_line_lands_no_events_either(tmp_path: Path) -> None:
    events = _write(tmp_path / "events.csv", f"{RR_HEADER}\n1433193132535,7,view,100,,\n")
    items = _write(tmp_path / "item_category.csv", "ItemId,categoryid,parentid\n100,11,1\n200,12,2,9\n")
    with pytest.raises(ValueError, match=r"item_category.csv: line 3 cannot be read"):
        adapt_retailrocket(events, tmp_path / "landing", item_category_csv=items)
    assert _landed_names(tmp_path / "landing") == []
