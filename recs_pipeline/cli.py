"""`recs`: the command line of recs_pipeline.

recs run                          # synthetic data -> landing -> DuckDB -> features -> Feast online
recs run --source taobao          # the Taobao sample in ../shared/data (or --path to a full file)
recs generate --events 1000000    # only land synthetic events
recs land FILE --kind events      # land a producer's file atomically
recs serve --workers 2            # the scoring service (docs/SERVING.md)
recs models                       # the registered versions, the champion marked *
recs rollback                     # promote the previous champion again
recs sign-models --all            # sign versions registered before model signing (docs/SECURITY.md)
recs forget USER_ID               # erase a user from every store (docs/PRIVACY.md)
recs api-key new --name shop --scopes events:write,recommendations:read   # docs/SECURITY.md
recs experiment                   # the running experiment's report (docs/EXPERIMENTS.md)
recs simulate                     # a shop's users clicking through the running service
recs feast apply                  # the Feast CLI on feature_repo/ with the pipeline's paths
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

import click
from tqdm import tqdm

from recs_pipeline.data.landing import KINDS as LANDING_KINDS
from recs_pipeline.settings import Settings, SettingsError

if TYPE_CHECKING:
    from recs_pipeline.runner import Progress

SOURCES = ("synthetic", "retailrocket", "taobao", "otto")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="RECS_HOME",
    help="Where all data lives (landing zone, DuckDB, Feast stores, Dagster home). Default ./data.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail, including Dagster's event log of every run.")
@click.pass_context
def main(ctx: click.Context, home: Path | None, verbose: bool) -> None:
    """recs_pipeline: real-time e-commerce recommendations from raw behaviour events."""
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # Libraries' warnings (deprecations in Feast's and ibis's code paths) are logged: shown with -v only.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if verbose else logging.ERROR)
    try:
        settings = Settings.from_env(home)
    except SettingsError as exc:
        raise click.UsageError(str(exc), ctx) from exc
    settings.ensure_dirs()
    ctx.obj = settings


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops a command as Ctrl-C does: through the SIGINT handler in force (Dagster's, during a
    run, which marks the run failed and stops it at the next step boundary; otherwise KeyboardInterrupt)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signum, frame)
    else:
        raise KeyboardInterrupt


class RunDisplay:
    """The progress display of ``recs run``: one bar over the pipeline's stages, the current step and
    its elapsed time beside it, and a line per finished step (job, step, outcome, seconds)."""

    def __init__(self, bar: tqdm, console: TextIO) -> None:
        self.bar = bar
        self.console = console
        self.waiting_for = ""

    def __call__(self, progress: Progress) -> None:
        if progress.state == "waiting":
            if progress.detail != self.waiting_for:
                self.bar.write(f"waiting for the duckdb pool, held by {progress.detail}", file=self.console)
                self.waiting_for = progress.detail
            self.bar.set_postfix_str(f"waiting for the duckdb pool {progress.seconds:.0f} s")
        elif progress.state in ("started", "running"):
            self.waiting_for = ""
            self.bar.set_postfix_str(f"{progress.job}: {progress.step} {progress.seconds:.0f} s")
        elif progress.step is not None:
            self.bar.write(
                f"  {progress.job:<26}{progress.step:<26}{progress.state:<10}{progress.seconds:7.1f} s",
                file=self.console,
            )


def _land_source(settings: Settings, source: str, path: Path | None, events: int, seed: int) -> str:
    """Land the chosen data into the landing zone; returns a one-line description."""
    if source == "synthetic":
        from recs_pipeline.data.synthetic import SyntheticConfig, write_synthetic

        config = SyntheticConfig(n_events=events, seed=seed)
        with tqdm(total=events, unit="ev", unit_scale=True, desc="generate+land", file=sys.stderr) as bar:
            summary = write_synthetic(config, settings.landing_dir, progress=bar.update)
        return f"synthetic: {summary.n_events:,} events, {summary.n_users:,} users, {summary.n_items:,} items (seed {seed})"
    from recs_pipeline.data import adapters

    threads, memory_limit = settings.duckdb_threads, settings.duckdb_memory_limit
    with tqdm(total=1, desc=f"convert {source}", file=sys.stderr) as bar:
        if path is None:
            adapted = adapters.adapt_shared_sample(
                source, settings.shared_data, settings.landing_dir, threads=threads, memory_limit=memory_limit
            )
        elif source == "retailrocket":
            categories = path.with_name("item_category.csv")
            adapted = adapters.adapt_retailrocket(
                path,
                settings.landing_dir,
                item_category_csv=categories if categories.exists() else None,
                threads=threads,
                memory_limit=memory_limit,
            )
        elif source == "taobao":
            adapted = adapters.adapt_taobao(path, settings.landing_dir, threads=threads, memory_limit=memory_limit)
        else:
            adapted = adapters.adapt_otto(path, settings.landing_dir, threads=threads, memory_limit=memory_limit)
        bar.update(1)
    return f"{source}: {adapted.n_events:,} events, {adapted.n_items:,} catalog rows"


def _own_stderr(stack: contextlib.ExitStack) -> TextIO:
    """The progress display's own copy of stderr (closed with ``stack``): while a run executes, Dagster
    sends the process's stdout and stderr through its compute-log files (mirrored back by ``tail``),
    which would chop the display up. A stderr without a descriptor (captured, as by click's
    ``CliRunner``) is used as it is."""
    try:
        fd = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation):
        return sys.stderr
    return stack.enter_context(os.fdopen(fd, "w", buffering=1))


@main.command()
@click.option(
    "--source", type=click.Choice(SOURCES), default="synthetic", show_default=True, help="Where events come from."
)
@click.option(
    "--path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A full public file of --source's format (default: the sample in ../shared/data).",
)
@click.option(
    "--events", type=click.IntRange(min=1), default=200_000, show_default=True, help="Synthetic events to generate."
)
@click.option("--seed", type=int, default=7, show_default=True, help="Synthetic generator seed.")
@click.option(
    "--snapshots",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Daily feature snapshots to build, ending with the newest event's day (more = training history).",
)
@click.option("--no-land", is_flag=True, help="Skip landing new data; process what is already in the landing zone.")
@click.option("--no-models", is_flag=True, help="Stop after the online store: no retraining or evaluation.")
@click.pass_obj
def run(
    settings: Settings,
    source: str,
    path: Path | None,
    events: int,
    seed: int,
    snapshots: int,
    no_land: bool,
    no_models: bool,
) -> None:
    """Run the whole pipeline once: land data, ingest, build feature snapshots, apply Feast, fill the online store.

    Exits non-zero if any step or blocking check fails.
    """
    import dagster as dg

    from recs_pipeline.runner import PipelineRunner

    started = time.perf_counter()
    if not no_land:
        click.echo(_land_source(settings, source, path, events, seed), err=True)
    verbose = bool(click.get_current_context().find_root().params.get("verbose"))
    try:
        with contextlib.ExitStack() as stack:
            console = _own_stderr(stack)
            bar = stack.enter_context(
                tqdm(total=3 + snapshots + (not no_models), desc="pipeline", unit="stage", file=console)
            )
            runner = PipelineRunner(
                settings, log_level="DEBUG" if verbose else "CRITICAL", progress=RunDisplay(bar, console)
            )
            bar.update(1)  # the instance is open
            runner.materialize("ingest")
            bar.update(1)
            days = runner.snapshot_days(snapshots)
            for day in days:
                runner.materialize("features", partition=day)
                bar.update(1)
            runner.materialize("feast")
            bar.update(1)
            promoted, verdict = None, None
            if not no_models:
                promoted, verdict = runner.retrain()
                bar.update(1)
            bar.set_postfix_str("done")
    except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
        click.echo("stopped (Ctrl-C or SIGTERM); the run in progress, if any, is marked failed", err=True)
        sys.exit(130)
    report = settings.reports_dir / "evaluation.json"
    click.echo(
        json.dumps(
            {
                "home": str(settings.home),
                "evaluation": str(report) if report.exists() and not no_models else None,
                "promoted": promoted,
                "promotion_gate": verdict,
                "snapshot_days": days,
                "seconds": round(time.perf_counter() - started, 1),
                "dagster_home": str(settings.dagster_home),
            },
            indent=2,
        )
    )


@main.command()
@click.option("--events", type=click.IntRange(min=1), default=200_000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.pass_obj
def generate(settings: Settings, events: int, seed: int) -> None:
    """Generate synthetic events and land them (no ingestion)."""
    click.echo(_land_source(settings, "synthetic", None, events, seed))


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(LANDING_KINDS), default="events", show_default=True)
@click.option("--name", help="Name in the landing zone (default: the file's name).")
@click.pass_obj
def land(settings: Settings, file: Path, kind: str, name: str | None) -> None:
    """Land FILE atomically (copy to a hidden temp name, then rename) for the next ingestion."""
    from recs_pipeline.data.landing import land_file

    click.echo(land_file(file, settings.landing_dir, kind, name))


@main.command()
@click.option("--reason", default="manual rollback", show_default=True, help="Recorded in the registry's history.")
@click.pass_obj
def rollback(settings: Settings, reason: str) -> None:
    """Make the previous champion model the champion again (its files are verified first)."""
    from recs_pipeline.models.registry import ModelRegistry

    version = ModelRegistry(settings.models_dir).rollback(reason=reason)
    click.echo(f"champion is now {version.version}")


@main.command()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The running service (`recs serve`).")
@click.option("--users", type=click.IntRange(min=1), default=200, show_default=True, help="Shoppers (seeded sample).")
@click.option("--requests", type=click.IntRange(min=1), default=3, show_default=True, help="Lists per shopper.")
@click.option("-k", type=click.IntRange(min=1, max=100), default=10, show_default=True, help="Items per list.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_obj
def simulate(settings: Settings, url: str, users: int, requests: int, k: int, seed: int) -> None:
    """Drive a running service with simulated shoppers (tastes from the feature snapshots) who answer the
    lists they are shown: views, carts and purchases posted with each list's request_id."""
    import httpx
    import numpy as np

    from recs_pipeline.simulation import ShopperModel
    from recs_pipeline.simulation import simulate as drive

    try:
        model = ShopperModel.from_features(settings.features_dir)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    known = sorted(model.tastes)
    if not known:
        raise click.ClickException(f"no shopper has events in the snapshots of {settings.features_dir}")
    chosen = sorted(np.random.default_rng(seed).choice(known, size=min(users, len(known)), replace=False).tolist())
    with httpx.Client(timeout=30) as client:
        result = drive(client, url.rstrip("/"), model, chosen, requests_per_user=requests, k=k, seed=seed)
    click.echo(json.dumps(result.to_json(), indent=2))


@main.command()
@click.option("--no-refresh", is_flag=True, help="Print the last computed report instead of computing it now.")
@click.pass_obj
def experiment(settings: Settings, no_refresh: bool) -> None:
    """Per experiment and variant: exposures, CTR, add-to-cart rate, conversion, revenue per exposure with
    intervals, differences to the control and the verdict; then the shadow model's lists against the
    served ones (ingests landed files, then computes the experiments group's assets, as the hourly
    schedule does)."""
    report, shadow = settings.reports_dir / "experiments.md", settings.reports_dir / "shadow.md"
    if not no_refresh:
        from recs_pipeline.runner import PipelineRunner

        runner = PipelineRunner(settings, log_level="CRITICAL")
        runner.materialize("ingest")
        runner.materialize("experiments")
    if not report.exists():
        raise click.ClickException(f"no experiments report at {report}: run `recs experiment` without --no-refresh")
    click.echo(report.read_text())
    if shadow.exists():
        click.echo(shadow.read_text())


@main.command()
@click.pass_obj
def models(settings: Settings) -> None:
    """List registered model versions, marking the champion."""
    from recs_pipeline.models.registry import ModelRegistry

    registry = ModelRegistry(settings.models_dir)
    champion = registry.champion()
    for v in registry.versions():
        mark = "*" if champion and v.version == champion.version else " "
        ndcg = v.metrics.get("valid", {}).get("ndcg@20")
        click.echo(f"{mark} {v.version}  valid ndcg@20={ndcg}  created {v.created}")


@main.command("forget")
@click.argument("user_id")
@click.pass_obj
def forget(settings: Settings, user_id: str) -> None:
    """Erase USER_ID from every store of the home (docs/PRIVACY.md); restart `recs serve` afterwards."""
    from recs_pipeline.privacy.erasure import forget_command

    try:
        lines = forget_command(settings, user_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in lines:
        click.echo(line)
    skipped = sum(line.startswith("skipped: ") for line in lines)
    if skipped:
        raise click.ClickException(
            f"erasure incomplete: {skipped} place(s) skipped (above); act on them and run it again"
        )


@main.group("api-key")
def api_key() -> None:
    """API keys of the scoring service (docs/SECURITY.md, "Authentication")."""


@api_key.command("new")
@click.option("--name", required=True, help="Who uses the key (shown in logs and limits, never the key).")
@click.option("--scopes", required=True, help="Comma-separated among events:write, recommendations:read and admin.")
@click.pass_obj
def api_key_new(settings: Settings, name: str, scopes: str) -> None:
    """Create a key, store its SHA-256 hash in the keys file (RECS_API_KEYS_FILE, else
    <home>/secrets/api_keys.json) and print the key once on stdout; running services take it at once."""
    from recs_pipeline.serving.auth import new_key
    from recs_pipeline.settings import AuthSettings

    try:
        path = AuthSettings.from_env().keys_path(settings)
        key = new_key(path, name=name, scopes=scopes)
    except (ValueError, SettingsError) as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"created key {name!r} in {path}; it is shown once, store it now:", err=True)
    click.echo(key)


@main.command("sign-models")
@click.argument("versions", nargs=-1)
@click.option("--all", "sign_all", is_flag=True, help="Every registered version that is not signed with the key.")
@click.option(
    "--registry",
    "sign_registry",
    is_flag=True,
    help="Also sign registry.json (which version is champion), e.g. one written before it was signed.",
)
@click.pass_obj
def sign_models(settings: Settings, versions: tuple[str, ...], sign_all: bool, sign_registry: bool) -> None:
    """Sign model versions with the deployment's key (RECS_MODEL_SIGNING_KEY, RECS_MODEL_SIGNING_KEY_FILE or
    <home>/secrets/model_signing.key): versions registered before signing, or under a replaced key. Their
    files must match their manifests. With --registry, also the promotion history (registry.json). Signing
    vouches for what is signed: sign only what you trust."""
    from recs_pipeline.models.registry import ModelIntegrityError, ModelRegistry, SigningKeyError

    registry = ModelRegistry(settings.models_dir)
    if sign_all and versions:
        raise click.UsageError("name the versions to sign, or pass --all (not both)")
    if not (sign_all or versions or sign_registry):
        raise click.UsageError("name the versions to sign, or pass --all and/or --registry")
    try:
        names = versions or (tuple(v.version for v in registry.versions()) if sign_all else ())
        key_id = registry.signing_key.key_id
        if sign_registry:
            signed_now = registry.sign_state()
            click.echo(f"registry.json: {'signed' if signed_now else 'already signed or empty'} (key {key_id})")
    except (ModelIntegrityError, SigningKeyError) as exc:
        raise click.ClickException(str(exc)) from exc
    refused = 0
    for version in names:  # a version that cannot be signed is reported; the others are still signed
        try:
            before = registry.get(version).manifest.get("signature")
            signed = registry.sign(version).manifest["signature"]
        except (KeyError, ModelIntegrityError) as exc:
            refused += 1
            click.echo(f"{version}: not signed: {exc.args[0] if isinstance(exc, KeyError) else exc}", err=True)
            continue
        click.echo(f"{version}: {'already signed' if before == signed else 'signed'} (key {key_id})")
    if refused:
        raise click.ClickException(f"{refused} of {len(names)} version(s) could not be signed (above)")


@main.command()
@click.option("--host", default=None, help="Interface to bind (default RECS_SERVE_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default RECS_SERVE_PORT or 8000).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes (default RECS_SERVE_WORKERS or the machine's CPU cores).",
)
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, workers: int | None) -> None:
    """Start the scoring service and event collector (FastAPI; OpenAPI docs at /docs).

    Runs WORKERS uvicorn worker processes on one socket. Each builds the app from its environment
    (``recs_pipeline.serving.app:create_app_from_env``): this command puts the resolved home there
    (``RECS_HOME``) and a fresh metrics directory (``PROMETHEUS_MULTIPROC_DIR``, removed at exit) so
    that /metrics sums every worker. SIGTERM or Ctrl-C stops the workers gracefully.
    """
    import shutil
    import tempfile

    import uvicorn

    from recs_pipeline.serving.auth import AuthConfigError, Authenticator
    from recs_pipeline.serving.observability import log_config
    from recs_pipeline.settings import AuthSettings, ServeSettings

    settings: Settings = ctx.obj
    try:
        serve_settings = ServeSettings.from_env()
        # once here, not once per worker: auth on with no key is a clear start-up error
        Authenticator.from_settings(settings, AuthSettings.from_env())
    except (SettingsError, AuthConfigError) as exc:
        raise click.UsageError(str(exc)) from exc
    verbose = bool(ctx.parent and ctx.parent.params.get("verbose"))
    metrics_dir = tempfile.mkdtemp(prefix="recs-serve-metrics-")
    # The entry point hands its options to the worker processes uvicorn starts: through the
    # environment they inherit. Both names of prometheus_client's directory point at the fresh one
    # (Feast's metrics module would otherwise make a temp dir of its own in every worker).
    os.environ.update(
        {
            "RECS_HOME": str(settings.home),
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            "PROMETHEUS_MULTIPROCESS_DIR": metrics_dir,
        }
    )
    try:
        uvicorn.run(
            "recs_pipeline.serving.app:create_app_from_env",
            factory=True,
            host=host or serve_settings.host,
            port=port or serve_settings.port,
            workers=workers or serve_settings.workers,
            log_config=log_config("DEBUG" if verbose else "INFO"),
            access_log=False,
            timeout_graceful_shutdown=30,
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


FEAST_UI_DEFAULT_HOST = "127.0.0.1"


def _feast_ui_on_loopback(args: tuple[str, ...]) -> tuple[str, ...]:
    """Add ``--host 127.0.0.1`` to a ``feast ui`` call that names no host (``-h`` is ``--host`` there)."""
    if not args or args[0] != "ui":
        return args
    if any(a in ("-h", "--host") or a.startswith("--host=") for a in args[1:]):
        return args
    return (args[0], "--host", FEAST_UI_DEFAULT_HOST, *args[1:])


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def feast(settings: Settings, args: tuple[str, ...]) -> None:
    """Run the Feast CLI (apply, ui, materialize-incremental, ...) on feature_repo/ with the pipeline's paths.

    ``recs feast ui`` listens on 127.0.0.1 unless a host is given (``--host 0.0.0.0`` to expose it);
    Feast's own default is every interface.
    """
    env = {**os.environ, **settings.feast_env()}
    args = _feast_ui_on_loopback(args)
    cmd = [sys.executable, "-m", "feast.cli.cli", "--feature-store-yaml", settings.feast_yaml, *args]
    sys.exit(subprocess.call(cmd, cwd=settings.feature_repo, env=env))


if __name__ == "__main__":
    main()
