"""The landing zone: where producers drop files and ingestion picks them up.

A file is visible only after an atomic rename, so ingestion never reads a half-written file.
Layout: ``<landing>/events/*.{parquet,csv,jsonl}`` and ``<landing>/items/*.{parquet,csv,jsonl}``.
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
    ``events.csv.gz``) is quarantined by ingestion with the reason, never silently skipped.
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
