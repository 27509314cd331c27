"""The entity-row SQLite store's encodings against Feast's own: keys byte for byte, values as Feast reads them.

The store keeps a row's features as JSON and entity keys built in bulk; whatever it returns must be
what Feast's own protobuf path would (``python_values_to_proto_values`` on write,
``feast_value_type_to_python_type`` on read), or ``get_online_features`` would answer differently.
"""

from __future__ import annotations

import json
import math
import random
import struct
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.value_type import ValueType

from recs_pipeline.feast.online_store import TYPE_CODECS, EntityKeyEncoder

SAMPLES: dict[ValueType, list[Any]] = {
    ValueType.STRING: ["", "i7", "näïve ☃", None],
    ValueType.INT32: [0, -5, 2**31 - 1, None],
    ValueType.INT64: [0, -1, 2**63 - 1, -(2**63), None],
    ValueType.BOOL: [True, False, None],
    ValueType.DOUBLE: [0.0, -0.0, 0.1, 1e300, 5e-324, -2.5, None],
    ValueType.FLOAT: [0.1, 1.5, -3.25e10, None],
    ValueType.STRING_LIST: [[], ["a", "b", "a"], None],
    ValueType.INT32_LIST: [[], [1, -2], None],
    ValueType.INT64_LIST: [[], [2**40, -1], None],
    ValueType.BOOL_LIST: [[], [True, False], None],
    ValueType.DOUBLE_LIST: [[], [0.1, 2.0], None],
    ValueType.FLOAT_LIST: [[], [0.1, 2.0], None],
}


@pytest.mark.parametrize("value_type", list(SAMPLES), ids=lambda t: t.name)
def test_values_read_back_as_feast_converts_them(value_type: ValueType) -> None:
    codec = TYPE_CODECS[value_type]
    for value in SAMPLES[value_type]:
        stored = json.loads(json.dumps(value))  # what the JSON column gives back
        expected = python_values_to_proto_values([value], value_type)[0]
        assert codec.to_proto(stored) == expected, (value_type, value)
        python = None if value is None else feast_value_type_to_python_type(expected)
        assert codec.to_python(stored) == python, (value_type, value)


def test_every_sample_type_has_a_codec() -> None:
    assert set(SAMPLES) == set(TYPE_CODECS)


def test_a_nan_reads_as_missing_as_feast_stores_it() -> None:
    assert python_values_to_proto_values([math.nan], ValueType.DOUBLE)[0].WhichOneof("val") is None
    assert TYPE_CODECS[ValueType.DOUBLE].to_proto(math.nan).WhichOneof("val") is None
    assert TYPE_CODECS[ValueType.DOUBLE].to_python(math.nan) is None


def test_duckdb_json_round_trips_doubles_exactly() -> None:
    """The bulk path writes DuckDB's ``to_json``: every double must come back bit for bit."""
    rng = random.Random(7)
    values = [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(20_000)]
    values = [v for v in values if math.isfinite(v)] + [0.1, 1 / 3, 2.0**-1074, 1.7976931348623157e308, -0.0]
    with duckdb.connect() as con:
        con.register("t", pa.table({"i": range(len(values)), "x": pa.array(values, pa.float64())}))
        texts = con.sql("SELECT to_json(struct_pack(x := x))::VARCHAR FROM t ORDER BY i").fetchall()
    back = [json.loads(t)["x"] for (t,) in texts]
    assert [struct.pack("<d", v) for v in back] == [struct.pack("<d", float(v)) for v in values]


@pytest.mark.parametrize(
    ("join_keys", "types", "rows"),
    [
        (["item_id"], [ValueType.STRING], [["i1"], [""], ["ünï ☃"], ["x" * 300]]),
        (["user_id", "category_id"], [ValueType.STRING, ValueType.STRING], [["u1", "c9"], ["u2", ""]]),
        (["zeta", "alpha"], [ValueType.INT64, ValueType.STRING], [[5, "a"], [-(2**63), "b"], [2**63 - 1, "c"]]),
        (["n"], [ValueType.INT32], [[0], [-7], [2**31 - 1]]),
    ],
)
def test_bulk_entity_keys_equal_feasts(join_keys: list[str], types: list[ValueType], rows: list[list[Any]]) -> None:
    encoder = EntityKeyEncoder(join_keys, types, 3)
    position = {k: i for i, k in enumerate(join_keys)}
    columns = [[row[position[k]] for row in rows] for k in encoder.join_keys]  # the encoder's (sorted) order
    expected = [
        serialize_entity_key(
            EntityKeyProto(
                join_keys=join_keys,
                entity_values=[python_values_to_proto_values([v], t)[0] for v, t in zip(row, types, strict=True)],
            ),
            3,
        )
        for row in rows
    ]
    assert encoder.encode(columns) == expected


def test_an_unsupported_key_type_or_version_is_refused() -> None:
    with pytest.raises(ValueError, match="join key types"):
        EntityKeyEncoder(["t"], [ValueType.UNIX_TIMESTAMP], 3)
    with pytest.raises(ValueError, match="serialization_version 2"):
        EntityKeyEncoder(["t"], [ValueType.STRING], 2)
    with pytest.raises(ValueError, match="no value for join key"):
        EntityKeyEncoder(["t"], [ValueType.STRING], 3).encode([["a", None]])


def test_keys_built_with_arrow_equal_feasts() -> None:
    """The bulk path builds string keys with Arrow (lengths little-endian, over 255 bytes too)."""
    users = ["u1", "", "ünï ☃", "x" * 300, "y" * 70_000]
    categories = ["c9", "é", "", "z" * 256, "c"]
    encoder = EntityKeyEncoder(["user_id", "category_id"], [ValueType.STRING, ValueType.STRING], 3)
    # the sorted join keys' order; a chunked column, as DuckDB's batches may hold
    built = encoder.encode_arrow([pa.chunked_array([categories[:2], categories[2:]]), pa.array(users)])
    expected = [
        serialize_entity_key(
            EntityKeyProto(
                join_keys=["user_id", "category_id"],
                entity_values=[
                    python_values_to_proto_values([u], ValueType.STRING)[0],
                    python_values_to_proto_values([c], ValueType.STRING)[0],
                ],
            ),
            3,
        )
        for u, c in zip(users, categories, strict=True)
    ]
    assert built == expected
    with pytest.raises(ValueError, match="no value for join key"):
        encoder.encode_arrow([pa.array(["c", None]), pa.array(["u", "v"])])
    with pytest.raises(ValueError, match="not all strings"):
        EntityKeyEncoder(["n"], [ValueType.INT64], 3).encode_arrow([pa.array([1])])


def test_rows_sorted_by_order_sql_are_in_their_keys_byte_order() -> None:
    """The bulk path writes rows in key order by sorting on lengths and strings instead of BLOBs:
    that order must be the keys' own byte order (ties and all), or SQLite's B-tree inserts scatter."""
    rng = random.Random(3)
    alphabet = ["a", "b", "Z", "0", "é", "☃", "\x00"]
    users = [
        rng.choice(["", "u1", "ü", "x" * 300, "x" * 256 + "a", "y" * 255]) + rng.choice(alphabet) for _ in range(400)
    ]
    categories = ["".join(rng.choices(alphabet, k=rng.randrange(0, 4))) for _ in range(400)]
    encoder = EntityKeyEncoder(["user_id", "category_id"], [ValueType.STRING, ValueType.STRING], 3)
    order = encoder.order_sql()
    assert order is not None
    with duckdb.connect() as con:
        con.register("t", pa.table({"user_id": users, "category_id": categories}))
        ordered = con.sql(f"SELECT category_id, user_id FROM t ORDER BY {order}").to_arrow_table()  # noqa: S608
    keys = encoder.encode_arrow(ordered.columns)
    assert len(set(keys)) > 100
    assert keys == sorted(keys)
    assert EntityKeyEncoder(["n"], [ValueType.INT64], 3).order_sql() is None
