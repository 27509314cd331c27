"""Feast without its import-time type instrumentation.

Feast decorates its public classes with typeguard's ``@typechecked``, which re-reads and re-compiles
their source at import: 3.8 of the 5.1 s that ``import feast`` costs here, in every process that
uses Feast (each Dagster run, each service worker, each ``feast apply``). typeguard skips that work
under ``python -O``, but ``-O`` also ignores the environment's precompiled bytecode (there is no
``.opt-1.pyc``), so every module is compiled from source again: slower still where bytecode cannot be
written (``PYTHONDONTWRITEBYTECODE``). :func:`skip_feast_type_instrumentation` gives the ``-O``
behaviour without ``-O``: it makes ``typeguard.typechecked`` return its target unchanged, as ``-O``
does. Only Feast uses the decorator in this environment; what is lost is Feast's run-time check of
argument types, the same as under ``-O``.

It must run before Feast is imported: ``recs_pipeline/__init__.py`` calls it, so every process that
imports the package (the CLI, the code location and its runs, the service, the tests) gets it, and
``python -m recs_pipeline.feast`` runs Feast's own CLI with it.
"""

from __future__ import annotations

import sys
from typing import Any


def _unchecked(target: Any = None, **_options: Any) -> Any:
    """``typeguard.typechecked`` as it behaves under ``python -O``: the target unchanged."""
    if target is None:  # used as @typechecked(...) with options
        return _unchecked
    return target


def skip_feast_type_instrumentation() -> None:
    """Make ``typeguard.typechecked`` a no-op unless Feast was already imported (then it is too late
    to matter, and a Feast already instrumented keeps its checks consistently)."""
    if "feast" in sys.modules:
        return
    try:
        import typeguard
    except ImportError:  # Feast not installed with typeguard: nothing to skip
        return
    typeguard.typechecked = _unchecked
