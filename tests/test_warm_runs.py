"""Warm run starts (recs_pipeline/warm_runs.py): the code server's run processes come from a fork server.

The end-to-end check (a run launched through a real ``dagster dev`` is a fork of the warm server)
is in tests/test_ui_launch.py.
"""

import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


@pytest.mark.integration
def test_a_process_without_a_code_server_is_left_alone() -> None:
    # the CLI, a run and the service load the code location too: nothing to install, nothing imported
    code = (
        "import sys; from recs_pipeline import warm_runs; "
        "assert 'dagster._grpc.server' not in sys.modules; "
        "assert warm_runs.install() is False; assert 'dagster._grpc.server' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_preload_skips_a_library_that_fails_with_any_error(tmp_path, monkeypatch, caplog) -> None:
    (tmp_path / "broken_shared_library.py").write_text("raise OSError('libgomp.so.1: cannot open shared object')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="recs_pipeline.warm_runs"):
        failed = warm_runs.preload(["json", "broken_shared_library", "no_such_module_here", "csv"])
    assert set(failed) == {"broken_shared_library", "no_such_module_here"}
    assert "libgomp" in failed["broken_shared_library"]
    assert "csv" in sys.modules  # went on after the failures
    assert "broken_shared_library" in caplog.text


def _report(queue) -> None:  # runs in a forked child: what it has imported, and its SIGTERM action
    modules = sorted(n for n in sys.modules if n.split(".")[0] in {"dagster", "feast", "polars", "recs_pipeline"})
    queue.put({"modules": modules, "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL})


def fork_a_child_and_report() -> None:
    """In its own process (the fork server is process-wide): fork a child, SIGTERM the server, print JSON."""
    from multiprocessing import forkserver

    context = warm_runs.forkserver_context()
    queue = context.Queue()
    child = context.Process(target=_report, args=(queue,))
    child.start()
    report = queue.get(timeout=120)
    child.join(timeout=30)
    server_pid = forkserver._forkserver._forkserver_pid
    os.kill(server_pid, signal.SIGTERM)  # as a stop of the whole process group sends it
    second = context.Process(target=_report, args=(queue,))
    second.start()  # the same server forks it: it ignored the SIGTERM
    queue.get(timeout=60)
    second.join(timeout=30)
    # a run killed outright (SIGKILL, out of memory): the code server learns it from the fork server
    killed = context.Process(target=time.sleep, args=(60,))
    killed.start()
    os.kill(killed.pid, signal.SIGKILL)
    killed.join(timeout=30)
    report.update(
        exitcodes=[child.exitcode, second.exitcode, killed.exitcode],
        same_server=forkserver._forkserver._forkserver_pid == server_pid,
    )
    print(json.dumps(report))


@pytest.mark.integration
def test_a_forked_run_process_has_the_libraries_but_not_this_project_s_code() -> None:
    tests_dir = Path(__file__).parent
    out = subprocess.run(
        [sys.executable, "-c", "import test_warm_runs; test_warm_runs.fork_a_child_and_report()"],
        cwd=tests_dir,
        env={**os.environ, "PYTHONPATH": str(tests_dir)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["exitcodes"] == [0, 0, -signal.SIGKILL]
    assert report["same_server"]
    assert report["sigterm_default"]  # the run gets SIGTERM's default action back
    modules = set(report["modules"])
    assert {"dagster", "feast", "polars", "recs_pipeline"} <= modules
    # this project's modules are imported from disk by each run (the child imported this test module,
    # and what it imports, to unpickle its target; the code location itself was not preloaded)
    assert "recs_pipeline.definitions" not in modules
    assert not {
        m for m in modules if m.startswith(("recs_pipeline.defs", "recs_pipeline.feast", "recs_pipeline.models"))
    }
