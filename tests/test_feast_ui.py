"""`recs feast ui`: starts on a home where the feature repo is applied, answers, and listens on loopback only."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from processes import stop_group

from recs_pipeline.cli import _feast_ui_on_loopback
from recs_pipeline.settings import Settings

STARTUP_TIMEOUT_S = 90


def test_feast_ui_defaults_to_loopback_and_keeps_a_given_host():
    assert _feast_ui_on_loopback(("ui", "--port", "9")) == ("ui", "--host", "127.0.0.1", "--port", "9")
    assert _feast_ui_on_loopback(("ui", "-h", "0.0.0.0")) == ("ui", "-h", "0.0.0.0")
    assert _feast_ui_on_loopback(("ui", "--host=::1")) == ("ui", "--host=::1")
    assert _feast_ui_on_loopback(("apply",)) == ("apply",)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(proc: subprocess.Popen, port: int) -> set[str]:
    """The local addresses the process tree listens on at ``port``."""
    found = set()
    parent = psutil.Process(proc.pid)
    for p in [parent, *parent.children(recursive=True)]:
        try:
            connections = p.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        found |= {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    return found


@pytest.mark.integration
def test_recs_feast_ui_answers_on_loopback(settings: Settings, tmp_path: Path):
    recs = [sys.executable, "-m", "recs_pipeline.cli", "--home", str(settings.home)]
    applied = subprocess.run([*recs, "feast", "apply"], capture_output=True, text=True, timeout=300)
    assert applied.returncode == 0, applied.stdout + applied.stderr

    port = _free_port()
    log = tmp_path / "feast_ui.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*recs, "feast", "ui", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code
            except httpx.TransportError:
                status = None
            if status == 200:
                break
            time.sleep(1)
        assert status == 200, f"no answer within {STARTUP_TIMEOUT_S}s (exit code {proc.poll()}):\n{log.read_text()}"
        projects = httpx.get(f"http://127.0.0.1:{port}/projects-list.json", timeout=10)
        assert projects.status_code == 200 and "recs_pipeline" in projects.text
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        assert _listening_addresses(proc, port) == {"127.0.0.1"}
    finally:
        stop_group(proc)
