"""Searching a pipeline home for a user id (the erasure and pseudonym tests): files, parquet values, tables.

Ids are short (``u103``), so raw bytes are searched for the id with boundaries (``u103`` not inside
``u1030`` or ``xu103``), and every parquet and text file is decoded and its values compared whole.
"""

import gzip
import re
from pathlib import Path

import polars as pl


def id_pattern(user: str) -> re.Pattern[bytes]:
    return re.compile(rb"(?<![0-9A-Za-z_])" + re.escape(user.encode()) + rb"(?![0-9])")


def places_holding(home: Path, user: str, *, skip: tuple[Path, ...] = ()) -> list[str]:
    """Every file under ``home`` (but those under ``skip``) whose bytes, decompressed text or parquet
    values hold ``user``."""
    pattern = id_pattern(user)
    found = []
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        if any(path.is_relative_to(s) for s in skip):
            continue
        data = path.read_bytes()
        if pattern.search(data):
            found.append(str(path))
            continue
        if path.name.endswith(".gz") and pattern.search(gzip.decompress(data)):
            found.append(f"{path} (gzip)")
        elif path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            found.extend(f"{path} ({c})" for c in frame.columns if user in string_values(frame[c]))
    return found


def string_values(series: pl.Series) -> set[str]:
    """Every string inside ``series`` (lists and structs opened)."""
    if isinstance(series.dtype, pl.List | pl.Array):
        return string_values(series.explode())
    if isinstance(series.dtype, pl.Struct):
        return set().union(*(string_values(f) for f in series.struct.unnest().iter_columns()))
    return set(series.drop_nulls().to_list()) if series.dtype == pl.String else set()
