"""Runs that start warm: the code server forks each run from a process with the heavy libraries imported.

The pinned Dagster's code server starts every run (a sensor's refresh, a UI launch, a schedule's)
in a fresh ``spawn``-ed interpreter (``DagsterApiServer.StartRun``), which imports Dagster, Feast,
DuckDB, pyarrow, numpy and polars again before the run's first step: seconds of a sensor run's
landed -> online time (docs/BENCHMARKS.md, "Landed file → online through the sensor"). With
:func:`install`, the code server takes its run processes from a ``forkserver`` context instead:
a fork server, a child process of the code server, imports :data:`PRELOAD` once
(:func:`prepare_server`), and each run is a fork of it that imports only this project's modules.
None of those is preloaded (but the package's ``__init__``, which only switches off Feast's
import-time type instrumentation, this module and :mod:`recs_pipeline._warm_preload`), so a run
executes the code on disk, as a spawned one does. The run's arguments are pickled to it, it reports
through the same queue and the code server cancels it the same way; whether it is alive, the code
server learns from the fork server, which therefore ignores SIGTERM (a stop of the whole process
group reaches the runs, which end cleanly, and the code server, after which the fork server exits).

Dagster 1.13 has no setting for a run's start method (its multiprocess *executor* has one, for
steps; runs here execute in process): :func:`install` overrides the private
``DagsterApiServer._mp_ctx`` with a class-level descriptor, which wins over the attribute the
server sets in ``__init__``, whenever the code location is loaded. ``tests/test_warm_runs.py``
fails if the pinned Dagster stops creating its run processes through that attribute.
``RECS_WARM_RUNS=false`` keeps Dagster's ``spawn``.

The fork server starts when the code server loads the code location (in a background thread, so
loading does not wait); a run launched before it has finished preloading waits for it (Dagster
holds its executions lock meanwhile). If it dies, ``multiprocessing`` starts a new one at the next
run; runs in flight at that moment are reported failed by the code server. It exits once the code
server and every run forked from it are gone, and holds the preloaded libraries in memory (about
0.4 GB), shared copy-on-write with the runs.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Sequence
from functools import cache
from multiprocessing.context import BaseContext
from typing import Any, Final

log = logging.getLogger(__name__)

# What the fork server imports (:func:`preload` skips, with a warning, a name that fails to import).
# Third-party libraries only: their code does not change while a code server runs; ``recs_pipeline``
# itself for its ``__init__``, which must run before Feast is imported (recs_pipeline/_feast_typechecks.py).
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


def preload(names: Sequence[str] = PRELOAD) -> dict[str, str]:
    """Import ``names``; returns those that failed, with the reason (each also logged as a warning).

    Python's own preloading skips only an ``ImportError`` and dies on any other error (say a shared
    library that cannot be loaded), which would take every later run with it; here the server goes
    on without that library, and a run that needs it fails on its own import, with the reason.
    """
    failed = {}
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 (skipped with its reason, see above)
            failed[name] = repr(e)
            log.warning("the warm run server could not import %s (runs import it themselves): %r", name, e)
    return failed


def prepare_server() -> None:
    """What the fork server does before it forks runs (:mod:`recs_pipeline._warm_preload`): ignore
    SIGTERM, each forked run getting the default action back, then :func:`preload`.

    The code server asks the fork server whether a run is alive, so the fork server must outlive a
    SIGTERM sent to the whole process group (``scripts/up``'s stop) until the runs have ended
    cleanly; it exits when the code server and every run are gone.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    preload()


@cache
def forkserver_context() -> BaseContext:
    """The ``forkserver`` context whose server runs :mod:`recs_pipeline._warm_preload`."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["recs_pipeline._warm_preload"])
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
    # `dagster api grpc ...`: what `dagster dev`, `dagster-daemon run`, the webserver and `dagster
    # code-server start` run for a python_module location. A run forked or spawned from it inherits
    # its argv, but it has a parent process in multiprocessing's sense.
    return sys.argv[1:3] == ["api", "grpc"] and multiprocessing.parent_process() is None


def install() -> bool:
    """Make this process's Dagster code server fork runs from the warm server (unless
    ``RECS_WARM_RUNS=false``, or where ``forkserver`` does not exist); returns whether it does.
    Called when the code location is loaded, in every process that loads it; a process without
    Dagster's code server (a run, the CLI, the tests) is left as it is."""
    server = _server_class()
    if server is None or "forkserver" not in multiprocessing.get_all_start_methods():  # e.g. Windows
        return False
    from recs_pipeline.settings import RunStartSettings

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
        forkserver.ensure_running()  # starts the server; its preloading goes on in that process
    except OSError as e:  # the first run starts it again, or fails with the reason
        log.warning("the warm run server did not start now (the first run will try again): %s", e)
