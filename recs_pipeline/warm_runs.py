"""Runs that start warm: the code server forks each run from a process with the heavy libraries imported.

The pinned Dagster's code server starts every run (a sensor's refresh, a UI launch, a schedule's)
in a fresh ``spawn``-ed interpreter (``DagsterApiServer.StartRun``), which imports Dagster, Feast,
DuckDB, pyarrow, numpy and polars again before the run's first step: seconds of a sensor run's
landed -> online time (docs/BENCHMARKS.md, "Landed file → online through the sensor"). With
:func:`install`, the code server takes its run processes from a ``forkserver`` context instead:
one server process imports :data:`PRELOAD` once, and each run is a fork of it, which imports only
this project's modules. None of those is preloaded (but the package's ``__init__``, which only
switches off Feast's import-time type instrumentation), so a run executes the code on disk, as a
spawned one does. Everything else is as with ``spawn``: the run's arguments are pickled to it, it
reports through the same queue, and the code server watches and cancels it the same way.

Dagster 1.13 has no setting for a run's start method (its multiprocess *executor* has one, for
steps; runs here execute in process): :func:`install` overrides the private
``DagsterApiServer._mp_ctx`` with a class-level descriptor, which wins over the attribute the
server sets in ``__init__``, whenever the code location is loaded. ``tests/test_warm_runs.py``
fails if the pinned Dagster stops creating its run processes through that attribute.
``RECS_WARM_RUNS=false`` keeps Dagster's ``spawn``.

The fork server starts when the code server loads the code location (in a background thread, so
loading does not wait) or with the first run, and is restarted by ``multiprocessing`` if it dies;
it stops with the code server. It holds the preloaded libraries in memory (about 0.4 GB), shared
copy-on-write with the runs.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import threading
from functools import cache
from multiprocessing.context import BaseContext
from typing import Any, Final

log = logging.getLogger(__name__)

# Imported once by the fork server. Third-party libraries only (their code does not change while a
# code server runs), plus ``recs_pipeline`` for its ``__init__``, which must run before Feast is
# imported (recs_pipeline/_feast_typechecks.py); a name that fails to import is skipped by Python.
PRELOAD: Final = (
    "recs_pipeline",
    "dagster",
    "dagster._grpc.impl",
    "feast",
    "feast.infra.online_stores.online_store",
    "feast.infra.key_encoding_utils",
    "duckdb",
    "pyarrow",
    "pyarrow.compute",
    "numpy",
    "pandas",
    "polars",
    "scipy.sparse",
    "implicit",
    "lightgbm",
    "pydantic_settings",
)


@cache
def forkserver_context() -> BaseContext:
    """The ``forkserver`` context whose server preloads :data:`PRELOAD`."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


class _RunProcessContext:
    """Class-level stand-in for ``DagsterApiServer._mp_ctx``: reads give :func:`forkserver_context`;
    the server's own assignment of its ``spawn`` context is ignored."""

    def __get__(self, server: object, owner: type | None = None) -> BaseContext:
        return forkserver_context()

    def __set__(self, server: object, value: Any) -> None:
        pass


def _server_class() -> type | None:
    """Dagster's code server class if this process has imported it (a code server has), else None."""
    module = sys.modules.get("dagster._grpc.server")
    return getattr(module, "DagsterApiServer", None)


def installed() -> bool:
    """Whether a code server in this process forks its runs from the warm server."""
    server = _server_class()
    return server is not None and isinstance(server.__dict__.get("_mp_ctx"), _RunProcessContext)


def _is_code_server() -> bool:
    # `dagster api grpc ...` (what `dagster dev`, `dagster-daemon run` and the webserver start for a
    # python_module location) or `dagster code-server start ...`
    args = sys.argv[1:3]
    return args == ["api", "grpc"] or args == ["code-server", "start"]


def install() -> bool:
    """Make this process's Dagster code server fork runs from the warm server (unless
    ``RECS_WARM_RUNS=false``); returns whether it does. Called when the code location is loaded, in
    every process that loads it; a process without Dagster's code server (a run, the CLI, the
    tests) is left as it is, and nothing is imported for it."""
    from recs_pipeline.settings import RunStartSettings

    server = _server_class()
    if server is None or "forkserver" not in multiprocessing.get_all_start_methods():  # e.g. Windows
        return False
    if not RunStartSettings.from_env().warm_runs:
        return False
    if not installed():
        server._mp_ctx = _RunProcessContext()  # type: ignore[attr-defined]
    if _is_code_server():
        threading.Thread(target=_start_server, name="warm-runs-forkserver", daemon=True).start()
    return True


def _start_server() -> None:
    from multiprocessing import forkserver

    forkserver_context()
    try:
        forkserver.ensure_running()
    except OSError as e:  # the first run starts it again, or fails with the reason
        log.warning("the warm run server did not start now (the first run will try again): %s", e)
