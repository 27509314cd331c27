"""Warm run starts (recs_pipeline/warm_runs.py): the code server's run processes come from a fork server.

The end-to-end check (a run launched through a real ``dagster dev`` is a fork of the warm server)
is in tests/test_ui_launch.py.
"""

import inspect
import subprocess
import sys

import pytest
from dagster._grpc.server import DagsterApiServer

from recs_pipeline import warm_runs


@pytest.fixture
def server_class(monkeypatch: pytest.MonkeyPatch) -> type:
    """Dagster's code server class, restored after the test (install changes it for the process)."""
    monkeypatch.setattr(DagsterApiServer, "_mp_ctx", None, raising=False)  # undone at teardown
    monkeypatch.delattr(DagsterApiServer, "_mp_ctx")
    return DagsterApiServer


def test_the_pinned_dagster_starts_runs_through_the_attribute_that_is_replaced() -> None:
    # If this fails, Dagster changed how its code server starts a run's process: warm_runs must follow.
    assert 'self._mp_ctx = multiprocessing.get_context("spawn")' in inspect.getsource(DagsterApiServer.__init__)
    assert "self._mp_ctx.Process(" in inspect.getsource(DagsterApiServer.StartRun)


def test_install_gives_the_code_server_the_forkserver_context(server_class, monkeypatch) -> None:
    monkeypatch.delenv("RECS_WARM_RUNS", raising=False)
    assert not warm_runs.installed()
    assert warm_runs.install()
    assert warm_runs.installed()
    server = object.__new__(server_class)
    server._mp_ctx = "the spawn context Dagster's __init__ assigns"  # ignored
    context = server._mp_ctx
    assert context is warm_runs.forkserver_context()
    assert context.get_start_method() == "forkserver"
    assert warm_runs.install()  # again: nothing changes
    assert server._mp_ctx is context


def test_recs_warm_runs_false_keeps_dagster_s_spawn(server_class, monkeypatch) -> None:
    monkeypatch.setenv("RECS_WARM_RUNS", "false")
    assert not warm_runs.install()
    assert not warm_runs.installed()


def test_a_process_without_a_code_server_is_left_alone() -> None:
    # the CLI, a run and the service load the code location too: nothing to install, nothing imported
    code = (
        "import sys; from recs_pipeline import warm_runs; "
        "assert 'dagster._grpc.server' not in sys.modules; "
        "assert warm_runs.install() is False; assert 'dagster._grpc.server' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _report_modules(queue) -> None:  # runs in the forked child
    queue.put({name for name in sys.modules if name.split(".")[0] in {"dagster", "feast", "polars", "recs_pipeline"}})


@pytest.mark.integration
def test_a_forked_run_process_has_the_libraries_but_not_this_project_s_code() -> None:
    context = warm_runs.forkserver_context()
    queue = context.Queue()
    child = context.Process(target=_report_modules, args=(queue,))
    child.start()
    try:
        modules = queue.get(timeout=120)
    finally:
        child.join(timeout=30)
    assert child.exitcode == 0
    assert {"dagster", "feast", "polars", "recs_pipeline"} <= modules
    # this project's modules are imported from disk by each run (the child imported this test module,
    # and what it imports, to unpickle its target; the code location itself was not preloaded)
    assert "recs_pipeline.definitions" not in modules
    assert not {m for m in modules if m.startswith("recs_pipeline.defs")}
