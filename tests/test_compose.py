"""The production container setup (Dockerfile, docker-compose.yml), checked without a
Docker engine: the compose file parses, every command names a real executable and a real
`grader` subcommand with valid options, the gunicorn target builds an app, the environment
it sets is what grader/config.py reads (and enough for production), the start-up order,
the worker's shutdown grace and scaling, Redis durability, and the image's user and sandbox.

What only an engine can show (the image builds, bubblewrap works under these security
options on a given host, the healthchecks pass) is left to `docker compose up`; see README
"Deploying with Docker Compose"."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any, Optional

import click
import pytest
import yaml

from grader.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# What an operator's .env holds (the values only need to be valid, not secret).
DOTENV = {
    "SECRET_KEY": "k" * 48,
    "POSTGRES_PASSWORD": "0123456789abcdef0123456789abcdef",
}
APP_SERVICES = ("migrate", "web", "worker", "sweeper")
# Executables that come from images rather than from this project.
IMAGE_EXECUTABLES = {"postgres", "redis-server", "gunicorn"}

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?|-|\?)(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message}, applied to every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        present = env.get(name)
        if op in (":-", ":?"):
            present = present or None
        if present is not None:
            return present
        if op in (":?", "?"):
            raise MissingVariable(f"{name}: {arg}")
        return arg if op in (":-", "-") else ""

    return _VAR.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def raw_compose() -> dict[str, Any]:
    # safe_load resolves the anchors and `<<` merges, as Compose does.
    return yaml.safe_load(COMPOSE.read_text())


def compose(env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    return interpolate(raw_compose(), DOTENV if env is None else env)


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    out = []
    for line in logical:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_exec_form(name: str) -> list[str]:
    values = [rest for word, rest in dockerfile_instructions() if word == name]
    assert values, f"the Dockerfile has no {name}"
    parsed = json.loads(values[-1])  # exec form: signals reach the process directly
    assert isinstance(parsed, list)
    return parsed


def argv(service: dict[str, Any]) -> list[str]:
    """What the container runs: the service's entrypoint (or the image's) plus its command."""
    builds_here = "build" in service
    if "entrypoint" in service:
        entry = as_list(service["entrypoint"])
    elif builds_here:
        entry = dockerfile_exec_form("ENTRYPOINT")
    else:
        entry = []
    command = as_list(service.get("command")) if "command" in service else (
        dockerfile_exec_form("CMD") if builds_here else [])
    return entry + command


def duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"not a Compose duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def resolve_grader_command(args: list[str]) -> click.Command:
    """Walk `grader ARGS` through the click groups and parse the leaf's options, as the
    real command line would (a typo'd subcommand or option fails here)."""
    from grader.cli import main

    command: click.Command = main
    path = ["grader"]
    rest = list(args)
    while isinstance(command, click.Group):
        assert rest, f"`{' '.join(path)}` needs a subcommand"
        ctx = click.Context(command, info_name=path[-1])
        sub = command.get_command(ctx, rest[0])
        assert sub is not None, f"`{' '.join(path)}` has no subcommand {rest[0]!r}"
        path.append(rest.pop(0))
        command = sub
    with command.make_context(" ".join(path), rest) as ctx:
        assert not ctx.args, f"unexpected arguments {ctx.args} for `{' '.join(path)}`"
    return command


def config_env_names() -> set[str]:
    """The variables grader/config.py reads, from its source."""
    source = (ROOT / "grader" / "config.py").read_text()
    names = set(re.findall(r"env_vars\.get\(\s*\"([A-Z][A-Z0-9_]*)\"", source))
    names |= set(re.findall(r"_seconds\(\s*env_vars\s*,\s*\"([A-Z][A-Z0-9_]*)\"", source))
    return names


def sandbox_env_names() -> set[str]:
    source = (ROOT / "grader" / "sandbox.py").read_text()
    return set(re.findall(r"os\.environ\.get\(\s*\"(GRADER_[A-Z0-9_]+)\"", source))


# --- the compose file ----------------------------------------------------------------------


def test_compose_parses_with_the_production_services() -> None:
    services = compose()["services"]
    assert set(services) == {"db", "redis", "migrate", "web", "worker", "sweeper"}
    assert services["db"]["image"].startswith("postgres:15")
    assert services["redis"]["image"].startswith("redis:7")
    for name in APP_SERVICES:
        assert "build" in services[name] and services[name]["image"] == services["web"]["image"], name


def test_secrets_come_from_dotenv_and_are_required() -> None:
    for missing in DOTENV:
        env = {k: v for k, v in DOTENV.items() if k != missing}
        with pytest.raises(MissingVariable, match=missing):
            compose(env)
    # Nothing secret is written into the file itself.
    text = COMPOSE.read_text()
    assert DOTENV["SECRET_KEY"] not in text
    assert "SECRET_KEY: ${SECRET_KEY:?" in text


def test_the_parser_here_agrees_with_yaml_merges() -> None:
    # The worker's settings are shared with the sweeper through a YAML merge: make sure the
    # merge really carried them (a mis-indented anchor would silently drop them).
    services = compose()["services"]
    for name in ("worker", "sweeper"):
        assert services[name]["security_opt"] and services[name]["stop_grace_period"], name
        assert service_env(services[name])["GRADER_ENV"] == "production"


@pytest.mark.parametrize("name", ["db", "redis", "migrate", "web", "worker", "sweeper"])
def test_every_command_is_a_real_executable(name: str) -> None:
    service = compose()["services"][name]
    run = argv(service)
    scripts = PYPROJECT["project"]["scripts"]
    if not run:
        # The image's own default command (postgres).
        assert service["image"].split(":")[0] in IMAGE_EXECUTABLES, name
        return
    executable = run[0]
    assert executable in scripts or executable in IMAGE_EXECUTABLES, f"{name}: {executable!r}"
    if executable in scripts:
        assert scripts[executable] == "grader.cli:main"
        resolve_grader_command(run[1:])


def test_the_app_services_run_the_intended_commands() -> None:
    services = compose()["services"]
    assert argv(services["migrate"]) == ["grader", "db", "upgrade"]
    assert argv(services["web"])[0] == "gunicorn"
    assert resolve_grader_command(argv(services["worker"])[1:]).name == "worker"
    # Exactly one process runs the sweeper's schedule.
    with_beat = [name for name, s in services.items() if "--beat" in argv(s)]
    assert with_beat == ["sweeper"]
    sweeper = argv(services["sweeper"])
    assert sweeper[:2] == ["grader", "worker"]
    concurrency = sweeper[sweeper.index("-c") + 1] if "-c" in sweeper else None
    assert concurrency == "1"


def test_the_image_default_command_is_a_grader_command() -> None:
    assert dockerfile_exec_form("ENTRYPOINT") == ["grader"]
    cmd = dockerfile_exec_form("CMD")
    assert cmd == ["--help"] or resolve_grader_command(cmd)


def gunicorn_args() -> tuple[Any, str]:
    from gunicorn.config import Config

    run = argv(compose()["services"]["web"])
    config = Config()
    parsed = config.parser().parse_args(run[1:])
    for key, value in vars(parsed).items():
        if key != "args" and value is not None:
            config.set(key.lower(), value)  # validates each value as gunicorn would
    assert len(parsed.args) == 1, parsed.args
    return config, parsed.args[0]


def test_gunicorn_options_are_valid() -> None:
    config, target = gunicorn_args()
    assert target == "grader.web:create_app()"
    assert config.bind == ["0.0.0.0:8000"]
    assert config.workers >= 1 and config.worker_class_str == "gthread"
    # A request slower than gunicorn's timeout would be killed mid-write.
    assert config.timeout >= 30
    assert "gunicorn==" in " ".join(PYPROJECT["project"]["dependencies"])


@pytest.fixture
def production_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The web service's environment, with the hosts swapped for a closed local port: the
    app must build without reaching PostgreSQL or Redis (gunicorn imports it per worker)."""
    env = service_env(compose()["services"]["web"])
    env["DATABASE_URL"] = env["DATABASE_URL"].replace("@db:5432/", "@127.0.0.1:1/")
    for key in ("REDIS_URL", "RATELIMIT_STORAGE_URI"):
        env[key] = env[key].replace("redis://redis:6379/", "redis://127.0.0.1:1/")
    for key in ("DATABASE_URL", "REDIS_URL", "BROKER_URL", "RATELIMIT_STORAGE_URI", "SECRET_KEY", "GRADER_ENV",
                "GRADER_PROXY_HOPS", "GRADER_QUEUE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GRADER_INSTANCE", str(tmp_path / "instance"))
    return env


def test_gunicorn_target_builds_the_production_app(production_env: dict[str, str]) -> None:
    from flask import Flask
    from gunicorn.util import import_app

    _, target = gunicorn_args()
    app = import_app(target)
    assert isinstance(app, Flask)
    settings = app.extensions["grader.settings"]
    assert settings.production and settings.proxy_hops == 1
    assert settings.ratelimit_storage_uri.startswith("redis://")
    assert app.config["SESSION_COOKIE_SECURE"] is True
    # The healthcheck's endpoint is public; with no database or Redis behind this test it
    # says which are down (503), which marks the container unhealthy.
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "down": ["database", "broker"]}


def test_web_healthcheck_asks_healthz() -> None:
    web = compose()["services"]["web"]
    test = web["healthcheck"]["test"]
    assert test[0] == "CMD" and "http://127.0.0.1:8000/healthz" in " ".join(test)
    assert duration_seconds(web["healthcheck"]["interval"]) > 0


# --- the environment ----------------------------------------------------------------------


def test_config_names_are_found_in_config_py() -> None:
    # Guards the source parsing below: if config.py is restyled, this says so.
    assert {"GRADER_ENV", "DATABASE_URL", "REDIS_URL", "BROKER_URL", "SECRET_KEY", "RATELIMIT_STORAGE_URI",
            "GRADER_PROXY_HOPS", "GRADER_LEASE_SECONDS"} <= config_env_names()
    assert "GRADER_SANDBOX_REQUIRE" in sandbox_env_names()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_variable_set_is_read_by_the_app(name: str) -> None:
    env = service_env(compose()["services"][name])
    known = config_env_names()
    if name in ("worker", "sweeper"):
        known |= sandbox_env_names()
    assert set(env) <= known, f"{name} sets variables nothing reads: {sorted(set(env) - known)}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_the_environment_is_a_complete_production_configuration(name: str, tmp_path: Path) -> None:
    env = service_env(compose()["services"][name])
    assert env["GRADER_ENV"] == "production"
    settings = Settings.from_env(environ=env, instance_path=tmp_path)
    assert settings.production
    assert "@db:5432/" in settings.database_url and settings.broker_url.startswith("redis://redis:6379/")
    assert settings.ratelimit_storage_uri.startswith("redis://redis:6379/")
    assert settings.ratelimit_storage_uri != settings.broker_url  # counters apart from the queue
    # Each of these is needed: without it, production refuses to start.
    for required in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL"):
        partial = {k: v for k, v in env.items() if k != required}
        with pytest.raises(ConfigError):
            Settings.from_env(environ=partial, instance_path=tmp_path)


def test_a_weak_secret_key_in_dotenv_is_refused(tmp_path: Path) -> None:
    env = service_env(compose({**DOTENV, "SECRET_KEY": "changeme"})["services"]["web"])
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        Settings.from_env(environ=env, instance_path=tmp_path)


def test_database_password_is_the_one_postgres_gets() -> None:
    services = compose()["services"]
    password = services["db"]["environment"]["POSTGRES_PASSWORD"]
    user = services["db"]["environment"]["POSTGRES_USER"]
    database = services["db"]["environment"]["POSTGRES_DB"]
    url = service_env(services["web"])["DATABASE_URL"]
    assert url == f"postgresql://{user}:{password}@db:5432/{database}"


# --- ordering, scaling, durability --------------------------------------------------------


def depends(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {k: (v or {}).get("condition", "service_started") for k, v in deps.items()}


def test_start_up_order() -> None:
    services = compose()["services"]
    assert depends(services["migrate"]) == {"db": "service_healthy"}
    assert depends(services["web"])["migrate"] == "service_completed_successfully"
    assert depends(services["web"])["redis"] == "service_healthy"
    for name in ("worker", "sweeper"):
        assert depends(services[name])["migrate"] == "service_completed_successfully", name
        assert depends(services[name])["redis"] == "service_healthy", name
    # The one-shot must not be restarted after it succeeded.
    assert services["migrate"]["restart"] == "no"
    assert services["db"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


@pytest.mark.parametrize("name", ["worker", "sweeper"])
def test_workers_get_time_to_finish_a_submission(name: str) -> None:
    service = compose()["services"][name]
    assert duration_seconds(service["stop_grace_period"]) >= 60
    # At least the lease, so a stopping worker finishes what it holds.
    lease = Settings.from_env(environ=service_env(service)).lease_seconds
    assert duration_seconds(service["stop_grace_period"]) >= lease


def test_worker_can_scale() -> None:
    worker = compose()["services"]["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports"), "a published port would collide between replicas"
    assert "--beat" not in argv(worker)


def test_only_the_web_port_is_published_and_on_loopback_by_default() -> None:
    services = compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert published == {"web": ["127.0.0.1:8000:8000"]}


def test_redis_keeps_queued_tasks() -> None:
    command = argv(compose()["services"]["redis"])
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    volumes = compose()["services"]["redis"]["volumes"]
    assert any(v.endswith(":/data") for v in volumes)


def test_data_lives_in_named_volumes() -> None:
    data = compose()
    assert "pgdata:/var/lib/postgresql/data" in data["services"]["db"]["volumes"]
    assert {"pgdata", "redisdata"} <= set(data["volumes"])


@pytest.mark.parametrize("name", ["worker", "sweeper"])
def test_worker_container_allows_bubblewrap_without_privileges(name: str) -> None:
    service = compose()["services"][name]
    options = {o.replace(":", "=", 1) for o in service["security_opt"]}
    assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= options
    assert "no-new-privileges=true" in options
    assert not service.get("privileged")
    assert not service.get("cap_add"), "bwrap needs user namespaces, not capabilities"
    # Fail closed: the required sandbox layers are never relaxed by default.
    required = service_env(service)["GRADER_SANDBOX_REQUIRE"].split(",")
    assert {"bwrap", "userns", "landlock", "seccomp"} <= set(required)
    assert "GRADER_SANDBOX" not in service_env(service)  # never insecure-subprocess


@pytest.mark.parametrize("name", ["web", "migrate"])
def test_services_that_run_no_sandbox_keep_dockers_confinement(name: str) -> None:
    service = compose()["services"][name]
    assert service.get("cap_drop") == ["ALL"]
    assert not any("unconfined" in o for o in service.get("security_opt", []))


# --- the image ----------------------------------------------------------------------------


def test_dockerfile_base_user_and_sandbox() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert froms[-1].split()[0] == "python:3.11-slim-bookworm"
    users = [rest for word, rest in instructions if word == "USER"]
    assert users, "the image must not run as root"
    final = users[-1].split(":")[0]
    assert final not in ("root", "0")
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert re.search(r"apt-get install\b[^&;]*\bbubblewrap\b", runs)
    # The user named by USER is created in the image with that uid.
    by = "--uid" if final.isdigit() else ""
    assert re.search(rf"useradd\b[^&;]*{by} ?{final}\b", runs), f"USER {final} is not created by useradd"


def test_dockerfile_installs_the_pinned_dependencies_and_the_layout_the_app_needs() -> None:
    instructions = dockerfile_instructions()
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "['project']['dependencies']" in runs and "pip install -r" in runs
    assert "pip install --no-deps -e /app" in runs
    copies = [rest for word, rest in instructions if word == "COPY"]
    assert ". /app" in copies
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    assert "GRADER_ASSIGNMENTS_DIR=/app/assignments" in env
    # Every dependency is pinned, so the image is reproducible.
    for dep in PYPROJECT["project"]["dependencies"]:
        assert "==" in dep, dep


def ignored(path: str, patterns: list[str]) -> bool:
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [pattern, pattern.removeprefix("**/")]
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, c) for p in prefixes for c in candidates) or (
            pattern.startswith("**/") and any(fnmatch.fnmatch(part, candidates[1]) for part in parts)
        ):
            result = not negate
    return result


def test_dockerignore_keeps_secrets_out_and_the_app_in() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for secret in (".env", ".env.production", ".git/config", ".venv/bin/python", "instance/secret_key"):
        assert ignored(secret, patterns), secret
    for needed in ("pyproject.toml", "README.md", "grader/web/__init__.py", "grader/runner/child.py",
                   "worker/tasks.py", "migrations/env.py", "assignments/vjp/spec.yaml"):
        assert (ROOT / needed).exists(), needed
        assert not ignored(needed, patterns), needed


# --- Docker's own parser, where the client has it -----------------------------------------


def compose_client() -> Optional[list[str]]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return [legacy] if (legacy := shutil.which("docker-compose")) else None


@pytest.mark.skipif(compose_client() is None, reason="no Docker Compose client installed")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    client = compose_client()
    assert client
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in DOTENV.items()))
    proc = subprocess.run(
        [*client, "--project-directory", str(tmp_path), "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


# --- worker hosts (docker-compose.worker.yml) and the main host's publishing override ------

WORKER_COMPOSE = ROOT / "docker-compose.worker.yml"
PUBLISH_COMPOSE = ROOT / "docker-compose.publish.yml"
# A worker host's .env: the main host's services at its private address.
WORKER_DOTENV = {
    "SECRET_KEY": "w" * 48,
    "DATABASE_URL": "postgresql://grader:0123456789abcdef0123456789abcdef@10.20.0.1:5432/grader",
    "BROKER_URL": "redis://:fedcba9876543210fedcba9876543210@10.20.0.1:6379/0",
}
# What the main host's .env adds for docker-compose.publish.yml.
PUBLISH_DOTENV = {**DOTENV, "GRADER_PRIVATE_ADDR": "10.20.0.1", "REDIS_PASSWORD": "fedcba9876543210fedcba9876543210"}


def worker_host(env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    return interpolate(yaml.safe_load(WORKER_COMPOSE.read_text()), WORKER_DOTENV if env is None else env)


def merge_override(base: Any, override: Any, key: str = "") -> Any:
    """Compose's merge of a second -f file: mappings key by key, ports appended, any other
    value (command, healthcheck test) replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            merged[k] = merge_override(base[k], v, k) if k in base else v
        return merged
    if key == "ports" and isinstance(base, list) and isinstance(override, list):
        return base + [p for p in override if p not in base]
    return override


def published(env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    env = PUBLISH_DOTENV if env is None else env
    return merge_override(compose(env), interpolate(yaml.safe_load(PUBLISH_COMPOSE.read_text()), env))


def test_a_worker_host_runs_only_workers_with_the_main_hosts_image_and_confinement() -> None:
    services = worker_host()["services"]
    assert set(services) == {"worker"}
    worker, main = services["worker"], compose()["services"]["worker"]
    assert resolve_grader_command(argv(worker)[1:]).name == "worker"
    assert argv(worker)[:2] == ["grader", "worker"]
    assert "--beat" not in argv(worker), "exactly one sweeper runs, on the main host"
    for key in ("build", "image", "init", "restart", "security_opt", "stop_grace_period"):
        assert worker[key] == main[key], key
    # Scalable: nothing that two replicas on one host would fight over.
    assert "container_name" not in worker and not worker.get("ports")
    assert not worker.get("depends_on"), "the services it needs run on another host"
    assert service_env(worker)["GRADER_SANDBOX_REQUIRE"] == service_env(main)["GRADER_SANDBOX_REQUIRE"]


def test_a_worker_hosts_environment_is_read_by_the_app_and_complete(tmp_path: Path) -> None:
    env = service_env(worker_host()["services"]["worker"])
    assert set(env) <= config_env_names() | sandbox_env_names(), sorted(set(env) - config_env_names() - sandbox_env_names())
    settings = Settings.from_env(environ=env, instance_path=tmp_path)
    assert settings.production
    assert settings.database_url == WORKER_DOTENV["DATABASE_URL"]
    assert settings.broker_url == WORKER_DOTENV["BROKER_URL"]
    assert settings.queue == Settings.from_env(environ=service_env(compose()["services"]["worker"])).queue
    for missing in WORKER_DOTENV:
        with pytest.raises(MissingVariable, match=missing):
            worker_host({k: v for k, v in WORKER_DOTENV.items() if k != missing})
    assert WORKER_DOTENV["SECRET_KEY"] not in WORKER_COMPOSE.read_text()


def test_publishing_for_worker_hosts_uses_the_private_address_and_redis_password() -> None:
    services = published()["services"]
    address, password = PUBLISH_DOTENV["GRADER_PRIVATE_ADDR"], PUBLISH_DOTENV["REDIS_PASSWORD"]
    ports = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert ports == {"web": ["127.0.0.1:8000:8000"], "db": [f"{address}:5432:5432"], "redis": [f"{address}:6379:6379"]}
    redis_cmd = argv(services["redis"])
    assert redis_cmd[redis_cmd.index("--requirepass") + 1] == password
    # The main file's durability flags survive the replaced command.
    main_redis = argv(compose()["services"]["redis"])
    for flag in ("--appendonly", "--maxmemory-policy"):
        assert redis_cmd[redis_cmd.index(flag) + 1] == main_redis[main_redis.index(flag) + 1], flag
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == password  # the healthcheck authenticates
    assert services["redis"]["healthcheck"] == compose()["services"]["redis"]["healthcheck"]
    # Dead connections of a vanished host are found and dropped (the server's defaults wait hours).
    db_cmd = argv(services["db"])
    assert db_cmd[0] == "postgres" and db_cmd[0] in IMAGE_EXECUTABLES
    db_settings = dict(db_cmd[i + 1].split("=", 1) for i, word in enumerate(db_cmd) if word == "-c")
    assert int(db_settings["tcp_keepalives_idle"]) <= 300
    assert duration_seconds(db_settings["idle_in_transaction_session_timeout"]) <= 300
    for name in APP_SERVICES:
        env = service_env(services[name])
        for key in ("REDIS_URL", "RATELIMIT_STORAGE_URI"):
            assert env[key].startswith(f"redis://:{password}@redis:6379/"), (name, key)
        assert env["SECRET_KEY"] == DOTENV["SECRET_KEY"], "the override must not drop the rest"
        Settings.from_env(environ=env)
    for missing in ("GRADER_PRIVATE_ADDR", "REDIS_PASSWORD"):
        with pytest.raises(MissingVariable, match=missing):
            published({k: v for k, v in PUBLISH_DOTENV.items() if k != missing})


def test_a_worker_hosts_urls_match_what_the_main_host_publishes() -> None:
    # The README's recipe end to end: the worker host's URLs reach the published ports with
    # the main host's credentials.
    from urllib.parse import urlsplit

    services = published()["services"]
    db_url, broker_url = urlsplit(WORKER_DOTENV["DATABASE_URL"]), urlsplit(WORKER_DOTENV["BROKER_URL"])
    assert f"{db_url.hostname}:{db_url.port}:5432" in services["db"]["ports"]
    assert f"{broker_url.hostname}:{broker_url.port}:6379" in services["redis"]["ports"]
    assert db_url.password == services["db"]["environment"]["POSTGRES_PASSWORD"]
    assert db_url.username == services["db"]["environment"]["POSTGRES_USER"]
    assert broker_url.password == PUBLISH_DOTENV["REDIS_PASSWORD"]


@pytest.mark.skipif(compose_client() is None, reason="no Docker Compose client installed")
def test_docker_compose_config_accepts_the_worker_host_and_publish_files(tmp_path: Path) -> None:
    client = compose_client()
    assert client
    for files, env in (([WORKER_COMPOSE], WORKER_DOTENV), ([COMPOSE, PUBLISH_COMPOSE], PUBLISH_DOTENV)):
        (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        args = [a for f in files for a in ("-f", str(f))]
        proc = subprocess.run(
            [*client, "--project-directory", str(tmp_path), *args, "config", "--quiet"],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
