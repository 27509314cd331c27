"""The deploy files against the code they start (Docker cannot run here).

Dockerfile, docker-compose.yaml, deploy/workspace.docker.yaml, .env.example and the commands in
docs/DEPLOY.md: every ``recs``, ``dagster``, ``dagster-webserver`` and ``dagster-daemon`` command they
contain exists in the installed CLI (click introspection of ``recs_pipeline.cli.main`` and of the pinned
Dagster's entry points) with the options given; every ``RECS_*`` variable is a field of a settings class in
``recs_pipeline/settings.py`` and its value passes that class's validation; files and modules named by the
Dagster commands exist; ports agree between the services, their health checks and the workspace; every
long-running service has a health check. Renaming a CLI option or a setting fails this file.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from pydantic import AliasChoices, SecretStr
from pydantic_settings import BaseSettings

import recs_pipeline.settings as settings_module
from recs_pipeline.cli import main as recs_cli

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = REPO / ".env.example"
DEPLOY_DOC = REPO / "docs" / "DEPLOY.md"
APP_DIR = "/app"  # the image's WORKDIR: the repository's root
# Stand-in for a secret the compose file requires (``${VAR:?...}``) and .env.example leaves empty.
SECRET_STAND_IN = "0123456789abcdef" * 4
# The ports the stores' images listen on (the compose file does not change them).
STORE_PORTS = {"postgres": 5432, "redis": 6379}


# --- the CLIs -------------------------------------------------------------------------------------------


def _console_script(name: str) -> click.Command:
    """The click command behind an installed console script (Dagster's entry points name a ``main``
    function that calls the module's ``cli`` group)."""
    (script,) = entry_points(group="console_scripts", name=name)
    loaded = script.load()
    if isinstance(loaded, click.Command):
        return loaded
    command = getattr(importlib.import_module(script.module), "cli", None)
    assert isinstance(command, click.Command), f"console script {name}: no click command in {script.value}"
    return command


CLIS: dict[str, click.Command] = {
    "recs": recs_cli,
    "dagster": _console_script("dagster"),
    "dagster-webserver": _console_script("dagster-webserver"),
    "dagster-daemon": _console_script("dagster-daemon"),
}


@dataclass
class Invocation:
    """One command line resolved against its click command."""

    argv: list[str]
    path: tuple[str, ...] = ()  # program and subcommands, e.g. ("dagster", "code-server", "start")
    options: dict[str, list[str]] = field(default_factory=dict)  # parameter name -> values given
    problems: list[str] = field(default_factory=list)


def _find_option(command: click.Command, token: str) -> click.Parameter | None:
    for param in command.params:
        if isinstance(param, click.Option) and token in (*param.opts, *param.secondary_opts):
            return param
    return None


def _convertible(param: click.Parameter, value: str) -> str | None:
    """Why ``value`` is not a valid value of ``param`` (None if it is, or cannot be told here)."""
    if "$" in value or isinstance(param.type, click.Path | click.File):
        return None  # left to the shell / a path in the container
    try:
        param.type.convert(value, param, None)
    except click.BadParameter as exc:
        return exc.message
    return None


def resolve(argv: list[str]) -> Invocation:
    """Walk ``argv`` (``argv[0]`` a key of :data:`CLIS`) through the click command tree."""
    inv = Invocation(argv)
    command = CLIS[argv[0]]
    inv.path = (argv[0],)
    tokens = iter(argv[1:])
    positionals = 0
    for token in tokens:
        if token == "--":
            break
        where = " ".join(inv.path)
        if token.startswith("-") and len(token) > 1:
            name, has_value, inline = token.partition("=")
            param = _find_option(command, name)
            if param is None:
                known = sorted(o for p in command.params if isinstance(p, click.Option) for o in p.opts)
                inv.problems.append(f"`{where}` has no option {name} (it has {', '.join(known)})")
                continue
            assert isinstance(param, click.Option) and param.name is not None
            if param.is_flag or param.count:
                inv.options.setdefault(param.name, []).append("true")
                continue
            value = inline if has_value else next(tokens, None)
            if value is None:
                inv.problems.append(f"`{where} {name}` needs a value")
                break
            if (why := _convertible(param, value)) is not None:
                inv.problems.append(f"`{where} {name} {value}`: {why}")
            inv.options.setdefault(param.name, []).append(value)
        elif isinstance(command, click.Group):
            sub = command.get_command(click.Context(command), token)
            if sub is None:
                inv.problems.append(
                    f"`{where}` has no command {token!r} (it has {', '.join(sorted(command.commands))})"
                )
                break
            command, positionals = sub, 0
            inv.path += (token,)
        elif command.context_settings.get("ignore_unknown_options"):
            break  # passes its arguments on (recs feast ...)
        else:
            arguments = [p for p in command.params if isinstance(p, click.Argument)]
            if not any(a.nargs == -1 for a in arguments) and positionals >= sum(a.nargs for a in arguments):
                inv.problems.append(f"`{where}` takes no argument {token!r}")
            positionals += 1
    if isinstance(command, click.Group) and not command.invoke_without_command:
        inv.problems.append(f"`{' '.join(inv.path)}` needs a command")
    return inv


# --- shell words ------------------------------------------------------------------------------------------

_OPERATOR = re.compile(r"^[;&|]+$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script (split at ; && || |), without leading ``VAR=value`` words."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if _OPERATOR.match(word):
            commands.append([])
        elif commands[-1] or not _ASSIGNMENT.match(word):
            commands[-1].append(word)
    return [c for c in commands if c]


def cli_invocations(argv: list[str], services: Mapping[str, Any] = {}) -> Iterator[list[str]]:
    """The argv of every CLI of :data:`CLIS` in a command: run directly, through ``sh -c``, or in a compose
    service (``docker compose exec|run [options] SERVICE recs ...``)."""
    if len(argv) >= 3 and argv[0] in ("sh", "bash") and argv[1] == "-c":
        for command in shell_commands(argv[2]):
            yield from cli_invocations(command, services)
        return
    for i, word in enumerate(argv):
        if word in CLIS and (i == 0 or argv[i - 1] in services):
            yield argv[i:]
            return


# --- the files ----------------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def read_env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not NAME=value"
            values[name.strip()] = value.strip()
    return values


ENV_EXAMPLE_VALUES = read_env_example()


def interpolate(text: str, env: Mapping[str, str] = ENV_EXAMPLE_VALUES) -> str:
    """Compose's interpolation with ``env`` as the .env file; a required variable left empty there gets
    :data:`SECRET_STAND_IN` (compose itself refuses to start without it)."""

    def one(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        value = env.get(name)
        if operator and operator.endswith("?"):
            return value or SECRET_STAND_IN
        if operator == ":-":
            return value or default
        if operator == "-":
            return default if value is None else value
        return value or ""

    parts = text.split("$$")  # $$ is a literal $ (expanded in the container, not by compose)
    return "$".join(_INTERPOLATION.sub(one, part) for part in parts)


def interpolated(node: Any) -> Any:
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, list):
        return [interpolated(n) for n in node]
    if isinstance(node, dict):
        return {k: interpolated(v) for k, v in node.items()}
    return node


COMPOSE_TEXT = COMPOSE_FILE.read_text()
RAW_COMPOSE = yaml.safe_load(COMPOSE_TEXT)
COMPOSE = interpolated(RAW_COMPOSE)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def as_argv(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def healthcheck_argv(test: str | list[str]) -> list[str]:
    """A compose or Dockerfile health check as a command (CMD-SHELL runs in ``sh -c``)."""
    test = as_argv(test) if isinstance(test, str) else list(test)
    if test[:1] == ["CMD-SHELL"]:
        return ["sh", "-c", " ".join(test[1:])]
    return test[1:] if test[:1] == ["CMD"] else test


@dataclass
class Dockerfile:
    env: dict[str, str]
    instructions: list[tuple[str, str]]  # (INSTRUCTION, rest of the line), continuation lines joined

    @classmethod
    def parse(cls, text: str) -> Dockerfile:
        logical, current = [], ""
        for line in text.splitlines():
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.lstrip().startswith("#"):
                continue  # a comment inside a continued instruction
            if line.rstrip().endswith("\\"):
                current += line.rstrip()[:-1] + " "
                continue
            logical.append(current + line)
            current = ""
        instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in logical]
        env: dict[str, str] = {}
        for name, rest in instructions:
            if name == "ENV":
                env.update(word.split("=", 1) for word in shlex.split(rest))
        return cls(env, instructions)

    def last(self, name: str) -> str | None:
        found = [rest for n, rest in self.instructions if n == name]
        return found[-1] if found else None

    def exec_form(self, name: str) -> list[str]:
        """The command of the last CMD, or of HEALTHCHECK (after its options), as argv."""
        rest = self.last(name)
        assert rest is not None, f"Dockerfile has no {name}"
        if name == "HEALTHCHECK":
            rest = rest[rest.index("CMD") + len("CMD") :].strip()
        return json.loads(rest) if rest.startswith("[") else ["sh", "-c", rest]


DOCKER = Dockerfile.parse(DOCKERFILE.read_text())


def doc_commands() -> list[list[str]]:
    """The shell commands in docs/DEPLOY.md's fenced code blocks (one per line, comments dropped)."""
    commands, in_block = [], False
    for line in DEPLOY_DOC.read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if in_block and line.strip() and not line.lstrip().startswith("#"):
            try:
                commands.extend(shell_commands(line.split(" # ")[0]))
            except ValueError:  # not shell (a file's content shown in the doc)
                continue
    return commands


# --- settings -----------------------------------------------------------------------------------------------


def settings_classes() -> list[type[BaseSettings]]:
    return [
        obj
        for obj in vars(settings_module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseSettings)
        and obj.__module__ == settings_module.__name__
        and obj.model_fields
    ]


def env_names(cls: type[BaseSettings]) -> dict[str, str]:
    """Environment variable -> field of a settings class (its alias, or env_prefix + the field's name)."""
    prefix = cls.model_config.get("env_prefix", "")
    names = {}
    for name, info in cls.model_fields.items():
        alias = info.validation_alias or info.alias
        if isinstance(alias, str):
            names[alias.upper()] = name
        elif isinstance(alias, AliasChoices):
            names.update({c.upper(): name for c in alias.choices if isinstance(c, str)})
        else:
            names[f"{prefix}{name}".upper()] = name
    return names


SETTING_NAMES: dict[str, type[BaseSettings]] = {n: cls for cls in settings_classes() for n in env_names(cls)}


def unknown_settings(env: Mapping[str, str]) -> list[str]:
    """The RECS_* variables of ``env`` that no settings class reads."""
    return sorted(n for n in env if n.startswith("RECS_") and n not in SETTING_NAMES)


_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$")


def secret_settings() -> set[str]:
    """Variables of settings typed as secrets, and any whose name says it holds one."""
    names = set()
    for name, cls in SETTING_NAMES.items():
        info = cls.model_fields[env_names(cls)[name]]
        if "SecretStr" in repr(info.annotation) or info.annotation is SecretStr:
            names.add(name)
    return names | {n for n in SETTING_NAMES if _SECRET_NAME.search(n)}


# --- the tests ----------------------------------------------------------------------------------------------


def all_invocations() -> list[tuple[str, list[str]]]:
    """(where, argv) of every CLI command in the Dockerfile, the compose file and docs/DEPLOY.md."""
    found = []
    for name, service in SERVICES.items():
        for key in ("entrypoint", "command"):
            for argv in cli_invocations(as_argv(service.get(key))):
                found.append((f"compose {name}.{key}", argv))
        test = (service.get("healthcheck") or {}).get("test")
        if test:
            for argv in cli_invocations(healthcheck_argv(test)):
                found.append((f"compose {name}.healthcheck", argv))
    for instruction in ("CMD", "HEALTHCHECK"):
        for argv in cli_invocations(DOCKER.exec_form(instruction)):
            found.append((f"Dockerfile {instruction}", argv))
    for command in doc_commands():
        for argv in cli_invocations(command, SERVICES):
            found.append(("docs/DEPLOY.md", argv))
    return found


INVOCATIONS = all_invocations()


def invocations_of(*path: str) -> list[tuple[str, Invocation]]:
    return [(where, inv) for where, argv in INVOCATIONS if (inv := resolve(argv)).path == path]


def service_running(*path: str) -> tuple[str, Invocation]:
    """The one compose service whose command is the CLI command ``path``."""
    found = [
        (name, inv)
        for name, service in SERVICES.items()
        for argv in cli_invocations(as_argv(service.get("command")))
        if (inv := resolve(argv)).path == path
    ]
    assert len(found) == 1, f"expected one compose service running `{' '.join(path)}`, found {found}"
    return found[0]


def test_every_command_and_option_exists_in_the_cli():
    assert {argv[0] for _, argv in INVOCATIONS} >= {"recs", "dagster", "dagster-webserver", "dagster-daemon"}
    problems = [f"{where}: {p}" for where, argv in INVOCATIONS for p in resolve(argv).problems]
    assert not problems, "\n".join(problems)


def test_the_checker_reports_renamed_commands_options_and_settings():
    assert resolve(["recs", "serve", "--workers", "2"]).problems == []
    assert "has no option --worker" in resolve(["recs", "serve", "--worker", "2"]).problems[0]
    assert "has no command 'serv'" in resolve(["recs", "serv"]).problems[0]
    assert "--workers 0" in resolve(["recs", "serve", "--workers", "0"]).problems[0]
    assert "has no command 'begin'" in resolve(["dagster", "code-server", "begin"]).problems[0]
    assert unknown_settings({"RECS_SERVE_WORKER": "2", "RECS_SERVE_WORKERS": "2", "OTHER": "x"}) == [
        "RECS_SERVE_WORKER"
    ]
    assert list(cli_invocations(["docker", "compose", "exec", "serve", "recs", "models"], SERVICES)) == [
        ["recs", "models"]
    ]


def test_the_service_runs_with_workers_and_the_dagster_roles_run():
    _, serve = service_running("recs", "serve")
    assert serve.options.get("workers"), "the compose file's `recs serve` sets --workers"
    for path in (("dagster", "code-server", "start"), ("dagster-webserver",), ("dagster-daemon", "run")):
        service_running(*path)


def test_every_recs_variable_is_a_setting_and_valid(monkeypatch: pytest.MonkeyPatch):
    sources = {"Dockerfile ENV": DOCKER.env, ".env.example": ENV_EXAMPLE_VALUES}
    sources |= {f"compose {name}.environment": service_env(s) for name, s in SERVICES.items()}
    interpolation_names = {m.group(1) for m in _INTERPOLATION.finditer(COMPOSE_TEXT)}
    sources["compose ${...}"] = dict.fromkeys(interpolation_names, "")
    problems = [f"{where}: {name} is not a setting" for where, env in sources.items() for name in unknown_settings(env)]
    assert not problems, "\n".join(problems) + "\n(settings: " + ", ".join(sorted(SETTING_NAMES)) + ")"

    # Each app service's environment (over the image's) passes the validation of every settings class it sets.
    for name, service in SERVICES.items():
        if service.get("image") != SERVICES["serve"]["image"]:
            continue
        env = {**DOCKER.env, **service_env(service)}
        with monkeypatch.context() as mp:
            for var in [v for v in os.environ if v.startswith("RECS_")]:
                mp.delenv(var)
            for var, value in env.items():
                mp.setenv(var, value)
            for cls in {SETTING_NAMES[v] for v in env if v in SETTING_NAMES}:
                try:
                    cls.from_env() if hasattr(cls, "from_env") else cls()
                except settings_module.SettingsError as exc:
                    pytest.fail(f"compose service {name}: {exc}")
            if "RECS_FEAST_YAML" in env:
                settings = settings_module.Settings.from_env()
                profile = settings.feature_repo / env["RECS_FEAST_YAML"]
                assert profile.exists(), f"compose service {name}: RECS_FEAST_YAML names {profile}, which is missing"
                try:
                    settings.feast_env()  # the profile's project, passwords and URLs, as Feast gets them
                except settings_module.SettingsError as exc:
                    pytest.fail(f"compose service {name}: {exc}")


def test_every_variable_compose_reads_is_in_env_example_and_back():
    referenced = {m.group(1) for m in _INTERPOLATION.finditer(COMPOSE_TEXT)}
    required = {m.group(1) for m in _INTERPOLATION.finditer(COMPOSE_TEXT) if m.group(2) and "?" in m.group(2)}
    assert referenced - set(ENV_EXAMPLE_VALUES) == set(), "compose reads variables .env.example does not document"
    assert set(ENV_EXAMPLE_VALUES) - referenced == set(), ".env.example documents variables compose does not read"
    assert required, "the compose file requires its secrets (${VAR:?message})"
    secrets = {v for v in required if _SECRET_NAME.search(v)}
    assert secrets, "the compose file requires its passwords and keys"
    assert {v for v in secrets if ENV_EXAMPLE_VALUES[v]} == set(), ".env.example holds no secret values"


def test_no_secret_is_baked_into_the_image():
    secrets = secret_settings()
    assert "RECS_MODEL_SIGNING_KEY" in secrets  # the detection works on a known secret
    baked = [
        word.split("=", 1)[0]
        for name, rest in DOCKER.instructions
        if name in ("ENV", "ARG")
        for word in shlex.split(rest)
        if word.split("=", 1)[0] in secrets or re.search(r"PASSWORD|SECRET|TOKEN", word.split("=", 1)[0])
    ]
    assert baked == [], f"the Dockerfile sets secrets: {baked}"
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".env", "data", "*.key", ".git"} <= ignored, "the build context leaves out secrets and data"


def test_the_image_installs_the_lock_runs_unprivileged_and_keeps_the_home_on_a_volume():
    runs = " ".join(rest for name, rest in DOCKER.instructions if name == "RUN")
    assert "uv sync --frozen --no-dev" in runs
    assert "uv.lock" in " ".join(rest for name, rest in DOCKER.instructions if name in ("RUN", "COPY"))
    assert DOCKER.last("USER") not in (None, "root", "0")
    volumes = json.loads(DOCKER.last("VOLUME") or "[]")
    assert DOCKER.env["RECS_HOME"] in volumes
    assert DOCKER.env["DAGSTER_HOME"].startswith(DOCKER.env["RECS_HOME"] + "/")
    assert (DOCKER.last("WORKDIR"), DOCKER.env["PATH"].split(":")[0]) == (APP_DIR, f"{APP_DIR}/.venv/bin")
    # every app service keeps the home (and the models) on named volumes
    for name, service in SERVICES.items():
        if service.get("image") == SERVICES["serve"]["image"]:
            targets = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
            assert targets.get(DOCKER.env["RECS_HOME"]) in COMPOSE["volumes"], name
            assert targets.get(f"{DOCKER.env['RECS_HOME']}/models") in COMPOSE["volumes"], name


def _repo_path(value: str) -> Path:
    path = Path(value)
    if path.is_absolute():
        assert value == APP_DIR or value.startswith(APP_DIR + "/"), f"{value} is outside the image's {APP_DIR}"
        path = Path(value[len(APP_DIR) :].lstrip("/"))
    return REPO / path


def test_dagster_commands_name_files_and_modules_that_exist():
    checked = 0
    for where, argv in INVOCATIONS:
        if argv[0] == "recs":
            continue
        inv = resolve(argv)
        for workspace in inv.options.get("workspace", []):
            assert _repo_path(workspace).is_file(), f"{where}: workspace {workspace} does not exist"
            checked += 1
        for module in inv.options.get("module_name", []):
            assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
            checked += 1
        for attribute in inv.options.get("attribute", []):
            (module,) = inv.options["module_name"]
            assert hasattr(importlib.import_module(module), attribute), f"{where}: {module} has no {attribute}"
        for directory in inv.options.get("working_directory", []):
            assert _repo_path(directory).is_dir(), f"{where}: no directory {directory}"
    assert checked >= 3  # the code server's module, the webserver's and the daemon's workspace
    # the instance file the one-shot service copies into DAGSTER_HOME
    instance = service_env(SERVICES["dagster-instance"])["DAGSTER_INSTANCE_YAML"]
    assert _repo_path(instance).is_file(), f"DAGSTER_INSTANCE_YAML={instance} does not exist"
    assert "DAGSTER_INSTANCE_YAML" in " ".join(as_argv(SERVICES["dagster-instance"]["command"]))


def _container_ports(service: Mapping[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])}


def _healthcheck_text(service: Mapping[str, Any]) -> str:
    return " ".join(healthcheck_argv(service["healthcheck"]["test"]))


def test_ports_agree_between_services_health_checks_and_the_workspace():
    workspace_file = next(w for _, inv in invocations_of("dagster-webserver") for w in inv.options.get("workspace", []))
    (location,) = yaml.safe_load(_repo_path(workspace_file).read_text())["load_from"]
    grpc = location["grpc_server"]
    name, code_server = service_running("dagster", "code-server", "start")
    assert grpc["host"] == name
    assert [str(grpc["port"])] == code_server.options["port"]
    (health,) = cli_invocations(healthcheck_argv(SERVICES[name]["healthcheck"]["test"]))
    assert resolve(health).path == ("dagster", "api", "grpc-health-check")
    assert resolve(health).options["port"] == code_server.options["port"]
    # the daemon reads the same workspace as the webserver
    assert {w for _, inv in invocations_of("dagster-daemon", "run") for w in inv.options["workspace"]} == {
        workspace_file
    }

    name, webserver = service_running("dagster-webserver")
    (port,) = webserver.options["port"]
    assert _container_ports(SERVICES[name]) == {int(port)}
    assert f"127.0.0.1:{port}/server_info" in _healthcheck_text(SERVICES[name])

    name, serve = service_running("recs", "serve")
    env = {**DOCKER.env, **service_env(SERVICES[name])}
    port = (serve.options.get("port") or [env.get("RECS_SERVE_PORT", "8000")])[0]
    assert env.get("RECS_SERVE_HOST", serve.options.get("host", ["127.0.0.1"])[0]) == "0.0.0.0"
    assert _container_ports(SERVICES[name]) == {int(port)}
    assert f"127.0.0.1:{port}/healthz" in _healthcheck_text(SERVICES[name])
    assert DOCKER.last("EXPOSE") == DOCKER.env["RECS_SERVE_PORT"]
    assert "RECS_SERVE_PORT" in " ".join(DOCKER.exec_form("HEALTHCHECK"))
    app_source = (REPO / "recs_pipeline" / "serving" / "app.py").read_text()
    assert '@app.get("/healthz"' in app_source  # the route the health checks ask


def test_store_urls_point_at_services_this_one_waits_for():
    for name, service in SERVICES.items():
        env = service_env(service)
        for var, store in (("RECS_REGISTRY_URL", "postgres"), ("RECS_REDIS_URL", "redis")):
            if var not in env:
                continue
            url = env[var] if "://" in env[var] else f"redis://{env[var].split(',')[0]}"
            host_port = urlsplit(url)
            assert (host_port.hostname, host_port.port) == (store, STORE_PORTS[store]), f"{name}: {var}"
            assert SERVICES[store]["image"].startswith(store)
            waits_for = _waits_for(name)
            assert store in waits_for, f"{name} uses {store} ({var}) but does not wait for it to be healthy"


def _waits_for(name: str) -> set[str]:
    found: set[str] = set()
    for dependency, spec in (SERVICES[name].get("depends_on") or {}).items():
        if spec.get("condition") in ("service_healthy", "service_completed_successfully"):
            found |= {dependency} | _waits_for(dependency)
    return found


def test_every_long_running_service_has_a_health_check_and_dependencies_wait_for_it():
    one_shot = {
        dependency
        for service in SERVICES.values()
        for dependency, spec in (service.get("depends_on") or {}).items()
        if spec.get("condition") == "service_completed_successfully"
    }
    assert one_shot == {"dagster-instance"}
    for name in one_shot:
        assert SERVICES[name].get("restart") == "no", f"{name} runs once"
    for name, service in SERVICES.items():
        if name in one_shot:
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert check.get("interval") and check.get("retries"), f"{name}'s health check has no interval or retries"
        assert service.get("restart") in ("unless-stopped", "always"), f"{name} is not restarted"
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in SERVICES, f"{name} depends on an unknown service {dependency}"
            if spec.get("condition") == "service_healthy":
                assert (SERVICES[dependency].get("healthcheck") or {}).get("test"), dependency
    # the daemon judges run processes by pid: it must see the code server's processes (run_health.py)
    assert SERVICES["daemon"].get("pid") == f"service:{service_running('dagster', 'code-server', 'start')[0]}"


def test_deploy_doc_runs_commands_in_services_that_exist():
    commands = doc_commands()
    compose = [c for c in commands if c[:2] == ["docker", "compose"]]
    assert compose, "docs/DEPLOY.md shows the docker compose commands"
    for command in compose:
        if len(command) > 2 and command[2] in ("exec", "run"):
            service = next(w for w in command[3:] if not w.startswith("-"))
            assert service in SERVICES, f"docs/DEPLOY.md: {' '.join(command)}: no service {service}"
    assert any(argv[:2] == ["recs", "run"] for where, argv in INVOCATIONS if where == "docs/DEPLOY.md")
    modules = [c[c.index("-m") + 1] for c in commands if "python" in c and "-m" in c[:-1]]
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"docs/DEPLOY.md: python -m {module}: no such module"
