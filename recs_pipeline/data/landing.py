"""The landing zone: where producers drop files and ingestion picks them up.

A file is visible only after an atomic rename, so ingestion never reads a half-written file.
Layout: ``<landing>/events/*.{parquet,csv,jsonl}`` and ``<landing>/items/*.{parquet,csv,jsonl}``.
Names starting with ``.`` are in flight and ignored.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

KINDS = ("events", "items")
FORMATS = (".parquet", ".csv", ".jsonl")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown landing kind {kind!r}; expected one of {KINDS}")


def _target(landing_dir: Path, kind: str, name: str) -> Path:
    _check_kind(kind)
    if Path(name).suffix not in FORMATS:
        raise ValueError(f"landing file {name!r} must end in one of {FORMATS}")
    if "/" in name or name.startswith("."):
        raise ValueError(f"landing file name {name!r} must be a plain name not starting with '.'")
    folder = Path(landing_dir) / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def _publish(tmp: Path, target: Path) -> Path:
    """fsync the temporary file, then rename it into place (atomic on one filesystem)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return target


@contextmanager
def landing_writer(landing_dir: Path, kind: str, name: str) -> Iterator[Path]:
    """Yield a hidden temporary path to write; on success it is renamed to ``<kind>/<name>``.

    For producers that write files themselves (DuckDB ``COPY``, pyarrow writers). On an
    exception the temporary file is removed and nothing becomes visible.
    """
    target = _target(landing_dir, kind, name)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        _publish(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def land_frame(frame: pl.DataFrame, landing_dir: Path, kind: str, name: str) -> Path:
    """Write ``frame`` to the landing zone atomically, in the format named by ``name``'s suffix."""
    with landing_writer(landing_dir, kind, name) as tmp:
        suffix = Path(name).suffix
        if suffix == ".parquet":
            frame.write_parquet(tmp)
        elif suffix == ".csv":
            frame.write_csv(tmp)
        else:
            frame.write_ndjson(tmp)
    return Path(landing_dir) / kind / name


def land_file(source: Path, landing_dir: Path, kind: str, name: str | None = None) -> Path:
    """Copy an existing file into the landing zone atomically (copy to a temp name, then rename)."""
    name = name or Path(source).name
    with landing_writer(landing_dir, kind, name) as tmp:
        shutil.copyfile(source, tmp)
    return Path(landing_dir) / kind / name


def landed_files(landing_dir: Path, kind: str) -> list[Path]:
    """Visible landed files of ``kind``, oldest first (by modification time, then name)."""
    _check_kind(kind)
    folder = Path(landing_dir) / kind
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix in FORMATS]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))
