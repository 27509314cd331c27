"""The landing zone: where producers drop files and ingestion picks them up.

A file is visible only after an atomic rename, so ingestion never reads a half-written file.
Layout: ``<landing>/<kind>/<name>`` for the kinds ``events``, ``items`` and ``exposures`` (the
scoring service's log of served lists), where the name ends in one of
:data:`SUFFIXES`: ``.parquet``, ``.csv`` or ``.jsonl``, the text formats optionally compressed with
gzip (``.csv.gz``, ``.jsonl.gz``) or zstd (``.csv.zst``, ``.jsonl.zst``). This module is the one
owner of that list: ``recs land`` refuses any other name, and ingestion quarantines any other file.
Names starting with ``.`` are in flight and ignored.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # polars only where a frame is written: the CLI imports this module at start
    import polars as pl

KINDS = ("events", "items", "exposures")
# The kinds whose files change features (what the landing sensor watches to keep them fresh online):
# exposures too, since the user profile's shown items (no-repeat rotation) come from them.
FEATURE_KINDS = ("events", "items", "exposures")
# Formats ingestion reads, by suffix, and the compressions of the text formats (parquet compresses
# its pages itself), named as DuckDB's readers name them.
FORMATS = (".parquet", ".csv", ".jsonl")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
COMPRESSIBLE = (".csv", ".jsonl")
SUFFIXES: tuple[str, ...] = FORMATS + tuple(f + c for f in COMPRESSIBLE for c in COMPRESSIONS)


@dataclass(frozen=True)
class FileFormat:
    """How ingestion reads a landed file, from its name.

    Attributes
    ----------
    format
        ``'parquet'``, ``'csv'`` or ``'jsonl'``.
    compression
        ``'none'``, ``'gzip'`` or ``'zstd'`` (the value of DuckDB's ``read_csv(compression=...)``).
    """

    format: str
    compression: str


def file_format(name: str) -> FileFormat | None:
    """The format of a landed file named ``name`` (suffixes compared case-insensitively), or None when
    ingestion does not read it (any name not ending in one of :data:`SUFFIXES`)."""
    lower = name.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            base, _, compressed = suffix.lstrip(".").partition(".")
            return FileFormat(base, COMPRESSIONS[f".{compressed}"] if compressed else "none")
    return None


def unsupported_reason(name: str) -> str:
    """Why ingestion does not read a file named ``name`` (for one it does, see :func:`file_format`)."""
    suffixes = "".join(Path(name).suffixes)
    described = f"type {suffixes!r}" if suffixes else "without a suffix"
    return (
        f"unsupported file {described}: ingestion reads {', '.join(SUFFIXES)} (parquet is compressed "
        "inside the file, never as a whole); convert it and land it again"
    )


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown landing kind {kind!r}; expected one of {KINDS}")


def _target(landing_dir: Path, kind: str, name: str) -> Path:
    _check_kind(kind)
    if file_format(name) is None:
        raise ValueError(f"landing file {name!r}: {unsupported_reason(name)}")
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
    """Write ``frame`` to the landing zone atomically, in the format named by ``name``'s suffix.

    Writes uncompressed files only (a ``.gz`` or ``.zst`` name is refused): compressed files come
    from producers, through :func:`land_file` or :func:`landing_writer`.
    """
    fmt = file_format(name)
    if fmt is not None and fmt.compression != "none":
        raise ValueError(f"land_frame writes uncompressed files; {name!r} names a {fmt.compression} one")
    with landing_writer(landing_dir, kind, name) as tmp:
        if fmt is not None and fmt.format == "parquet":
            frame.write_parquet(tmp)
        elif fmt is not None and fmt.format == "csv":
            frame.write_csv(tmp)
        else:
            frame.write_ndjson(tmp)
    return Path(landing_dir) / kind / name


def publish(path: Path, landing_dir: Path, kind: str, name: str | None = None) -> Path:
    """Move a finished file into the landing zone atomically (fsync, then rename), without a copy.

    For files written elsewhere on the landing zone's filesystem, e.g. the collector's journals in a
    hidden folder of the landing zone (:mod:`recs_pipeline.serving.journal`). Returns the landed path.
    """
    return _publish(Path(path), _target(landing_dir, kind, name or Path(path).name))


def land_file(source: Path, landing_dir: Path, kind: str, name: str | None = None) -> Path:
    """Copy an existing file into the landing zone atomically (copy to a temp name, then rename)."""
    name = name or Path(source).name
    with landing_writer(landing_dir, kind, name) as tmp:
        shutil.copyfile(source, tmp)
    return Path(landing_dir) / kind / name


@dataclass(frozen=True)
class LandedFile:
    """A visible file of the landing zone, as the file system describes it.

    Attributes
    ----------
    kind
        ``'events'`` or ``'items'`` (its folder).
    name
        File name inside the folder.
    size
        Bytes.
    landed_ns
        Landing time: the file's ``st_ctime_ns``, see :func:`scan_landing`.
    """

    kind: str
    name: str
    size: int
    landed_ns: int

    @property
    def key(self) -> str:
        """``<kind>/<name>``, the file's path relative to the landing zone."""
        return f"{self.kind}/{self.name}"

    @property
    def landed_at(self) -> float:
        """Landing time in epoch seconds."""
        return self.landed_ns / 1e9


def scan_landing(landing_dir: Path, kinds: Iterable[str] = KINDS) -> list[LandedFile]:
    """Visible files of ``kinds`` in the landing zone, oldest landing first (then by key).

    Every visible regular file is listed, whatever its name: one ingestion cannot read (say
    ``events.csv.bz2``) is quarantined by ingestion with the reason, never silently skipped.
    Names starting with ``.`` are files still being written (see :func:`landing_writer`).

    The one definition of a file's landing time and of the landing order, shared by ingestion
    (files load in this order) and the landing sensor (its cursor and the freshness clock).
    Landing time is ``st_ctime``: the atomic rename that publishes a file sets it, and a producer
    cannot carry an old one over (``mv`` and ``cp -p`` keep ``st_mtime``, so a file written long
    ago and moved in would sort before, and hide behind, files landed earlier). Reads directory
    entries and ``stat`` only; a file removed while listing is left out.

    Parameters
    ----------
    landing_dir
        The landing zone (``Settings.landing_dir``).
    kinds
        Subfolders to list.

    Returns
    -------
    list of LandedFile
        Sorted by ``(landed_ns, key)``.
    """
    found = []
    for kind in kinds:
        _check_kind(kind)
        folder = Path(landing_dir) / kind
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append(LandedFile(kind, path.name, st.st_size, st.st_ctime_ns))
    return sorted(found, key=lambda f: (f.landed_ns, f.key))


def landed_files(landing_dir: Path, kind: str) -> list[Path]:
    """Visible landed files of ``kind``, oldest landing first (the order of :func:`scan_landing`)."""
    return [Path(landing_dir) / f.kind / f.name for f in scan_landing(landing_dir, (kind,))]
