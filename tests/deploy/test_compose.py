"""Static validation of the multi-machine deployment: Dockerfile, docker-compose.yaml, .env.example, deploy/.

No Docker engine is needed: Debian's ``docker-compose`` (1.29) resolves and validates a compose file on its own
(``apt-get install -y docker-compose``). Where interpolation matters the assertions run on its resolved output
(``docker-compose config``), made in a temporary copy of the project with a ``.env`` built from ``.env.example`` and
a clean environment, so neither a developer's own ``.env`` nor the test session's variables leak in.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = REPO / ".env.example"

# The official Airflow 3 CeleryExecutor layout (airflow-core/docs/howto/docker-compose/docker-compose.yaml).
OFFICIAL_SERVICES = {
    "postgres",
    "redis",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
# Long-running Airflow processes and the command each runs.
AIRFLOW_COMMANDS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
    "flower": "celery flower",
}
OPTIONAL_PROFILES = {"sandbox": "sandbox", "flower": "flower", "airflow-cli": "debug"}
STATE_DB_ENV = "OPTIMOVE_NETMERA_STATE_DB_URL"
CONFIG_ENV = "OPTIMOVE_NETMERA_CONFIG"
CONN_ENVS = {"optimove": "AIRFLOW_CONN_OPTIMOVE_DEFAULT", "netmera": "AIRFLOW_CONN_NETMERA_DEFAULT"}
INBOUND_ENV = "OPTIMOVE_NETMERA_INBOUND_API_KEY"
# Values that must be the same in every Airflow process of a split deployment.
SHARED_KEYS = (
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    STATE_DB_ENV,
    CONFIG_ENV,
    *CONN_ENVS.values(),
    INBOUND_ENV,
)
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR; "$$" is a literal "$".
_VAR_RE = re.compile(r"(?<!\$)\$(?:\{(?P<braced>[A-Za-z_]\w*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))")
_INSTALL_HINT = (
    "the docker-compose binary is missing; these tests validate docker-compose.yaml with it (no Docker engine "
    "needed). Install Debian's package: apt-get update && apt-get install -y docker-compose"
)


# --- helpers -------------------------------------------------------------------------------------------------------


def _docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail(_INSTALL_HINT, pytrace=False)
    return path


def _raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_vars() -> list[tuple[str, str | None, str]]:
    """Every variable the compose file interpolates: (name, operator or None, argument)."""
    found = []
    for m in _VAR_RE.finditer(COMPOSE.read_text()):
        if m["bare"]:
            found.append((m["bare"], None, ""))
        else:
            found.append((m["braced"], m["op"], m["arg"]))
    return found


def _env_example() -> dict[str, str]:
    """KEY=VALUE lines of .env.example (quotes removed), in file order."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example: {line!r} is not KEY=VALUE"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _required_vars() -> set[str]:
    return {name for name, op, _ in _compose_vars() if op in (":?", "?")}


def _write_project(dest: Path, env: dict[str, str]) -> Path:
    """A copy of what docker-compose.yaml names (itself, deploy/) with the given .env."""
    shutil.copy2(COMPOSE, dest / COMPOSE.name)
    shutil.copytree(REPO / "deploy", dest / "deploy")
    (dest / ".env").write_text("".join(f"{k}='{v}'\n" for k, v in env.items()))
    return dest


def _filled_env() -> dict[str, str]:
    """.env.example with the required keys filled in (fixed test values, not secrets)."""
    env = _env_example()
    for name in _required_vars() & env.keys():  # a required key missing from .env.example stays missing
        env[name] = f"test-value-of-{name.lower()}"
    return env


def _run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: the shell's variables win over .env in compose's interpolation, and the test session
    # sets some of the very names the compose file reads (OPTIMOVE_NETMERA_STATE_DB_URL, AIRFLOW_CONN_*).
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(project), "LANG": "C.UTF-8"}
    cmd = [_docker_compose(), "-f", str(project / COMPOSE.name), "--project-directory", str(project), *args]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False)


def _unescape(node: Any) -> Any:
    """``docker-compose config`` writes a literal "$" as "$$" (so its output can be re-read): undo that."""
    if isinstance(node, dict):
        return {k: _unescape(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unescape(v) for v in node]
    if isinstance(node, str):
        return node.replace("$$", "$")
    return node


def _resolved(project: Path, *profiles: str) -> dict[str, Any]:
    args = [a for p in profiles for a in ("--profile", p)]
    proc = _run(project, *args, "config")
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    return _unescape(yaml.safe_load(proc.stdout))


def _published_ports(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host ip, host port) of every published port, short ("[ip:]host:container[/proto]") or long syntax."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            if port.get("published") is not None:
                out.append((str(port.get("host_ip", "")), int(port["published"])))
            continue
        spec = str(port).split("/")[0]
        parts = spec.split(":")
        if len(parts) == 3:
            out.append((parts[0], int(parts[1])))
        elif len(parts) == 2:
            out.append(("", int(parts[0])))
    return out


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY (flags such as --chown dropped)."""
    out = []
    for word, rest in _dockerfile_instructions():
        if word == "COPY":
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            out.append((args[:-1], args[-1]))
    return out


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in _dockerfile_instructions():
        if word == "ENV":
            key, _, value = rest.partition("=")
            env[key.strip()] = value.strip().strip("'\"")
    return env


def _project_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run Airflow from the project image (everything but postgres, redis and the sandbox)."""
    image = _raw_compose()["x-project-image"]["image"]
    image = re.sub(r"\$\{[A-Za-z_]\w*:-([^}]*)\}", r"\1", image)
    return {name: svc for name, svc in config["services"].items() if svc.get("image") == image and name != "sandbox"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the deployment with a .env made from .env.example (required keys filled with test values)."""
    return _write_project(tmp_path, _filled_env())


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """docker-compose.yaml as compose resolves it with every profile enabled (read-only: tests never change it)."""
    project = _write_project(tmp_path_factory.mktemp("compose"), _filled_env())
    return _resolved(project, *sorted(set(OPTIONAL_PROFILES.values())))


# --- docker-compose validates ------------------------------------------------------------------------------------


def test_compose_file_validates_with_env_from_example(project: Path) -> None:
    proc = _run(project, "config", "-q")
    assert proc.returncode == 0, proc.stderr
    # Every variable is set or defaulted: compose warns "The X variable is not set" otherwise.
    assert "is not set" not in proc.stderr, proc.stderr


def test_compose_refuses_to_start_without_the_shared_keys(tmp_path: Path) -> None:
    required = _required_vars()
    assert {"FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", INBOUND_ENV} <= required
    for name in sorted(required):
        env = _filled_env()
        env[name] = ""
        (tmp_path / name).mkdir()
        proc = _run(_write_project(tmp_path / name, env), "config")
        assert proc.returncode != 0, f"compose accepted an empty {name}"
        assert name in proc.stderr and ".env" in proc.stderr, proc.stderr


@pytest.mark.parametrize(("profile", "service"), [("sandbox", "sandbox"), ("flower", "flower")])
def test_profile_lists_its_service(project: Path, profile: str, service: str) -> None:
    proc = _run(project, "--profile", profile, "config", "--services")
    assert proc.returncode == 0, proc.stderr
    assert service in proc.stdout.split()


def test_optional_services_sit_behind_their_profiles(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name, profile in OPTIONAL_PROFILES.items():
        assert services[name].get("profiles") == [profile], name
    for name in OFFICIAL_SERVICES:
        assert not services[name].get("profiles"), f"{name} must start without a profile"


# --- layout ---------------------------------------------------------------------------------------------------------


def test_official_celery_layout(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) >= OFFICIAL_SERVICES, OFFICIAL_SERVICES - set(services)
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7.2-bookworm"
    for name, command in AIRFLOW_COMMANDS.items():
        got = services[name]["command"]
        assert (got if isinstance(got, str) else " ".join(got)) == command, name
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert services[name].get("restart") == "always", name
    for name in ("postgres", "redis", "sandbox"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in _project_services(resolved):
        assert services[name]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert services[name]["environment"]["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false", name


def test_project_image_is_built_not_pulled(resolved: dict[str, Any]) -> None:
    raw = _raw_compose()
    assert raw["x-project-image"]["build"] == "."
    services = resolved["services"]
    project = Path(services["airflow-apiserver"]["build"]["context"])
    assert (project / COMPOSE.name).is_file(), "the build context is the compose file's directory"
    for name in [*_project_services(resolved), "sandbox"]:
        assert Path(services[name]["build"]["context"]) == project, f"{name} is not built from the repository"
        assert not str(services[name]["image"]).startswith("apache/airflow"), name
        for volume in services[name].get("volumes", []):
            source = str(volume).split(":")[0]
            assert not source.startswith(("/", ".")), f"{name} mounts source from the host: {volume}"
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in COMPOSE.read_text()
    assert "FabAuthManager" not in COMPOSE.read_text(), "the FAB provider is not installed"


def test_depends_on_names_existing_services(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert not services[dep].get("profiles"), f"{name} depends on {dep}, which only runs under a profile"
    for name in AIRFLOW_COMMANDS:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"


def test_published_ports_are_unique(resolved: dict[str, Any]) -> None:
    seen: dict[int, str] = {}
    for name, svc in resolved["services"].items():
        for _ip, port in _published_ports(svc):
            assert port not in seen, f"port {port} published by {seen[port]} and {name}"
            seen[port] = name
    assert seen.get(8080) == "airflow-apiserver"
    assert seen.get(5555) == "flower"


def test_paths_named_by_compose_and_dockerfile_exist() -> None:
    raw = _raw_compose()
    context = REPO / raw["x-project-image"]["build"]
    assert (context / "Dockerfile").is_file()
    for name, svc in raw["services"].items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                path = (REPO / source).resolve()
                assert path.exists(), f"{name} mounts missing {source}"
                if path.is_dir():
                    assert any(path.iterdir()), f"{name} mounts empty {source}"
    ignored = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    for sources, _dest in _copies():
        for source in sources:
            assert (context / source).exists(), f"COPY {source}: no such file in the build context"
            clean = source.rstrip("/")
            hits = [p for p in ignored if fnmatch(clean, p.rstrip("/")) or fnmatch(clean, p.removeprefix("**/"))]
            assert not hits, f"COPY {source} is excluded by .dockerignore {hits}"
    for secret_or_state in (".env", ".venv", ".git", ".airflow", "tests"):
        assert secret_or_state in ignored, f".dockerignore must exclude {secret_or_state}"


def test_postgres_init_creates_the_state_database(resolved: dict[str, Any]) -> None:
    mounts = resolved["services"]["postgres"]["volumes"]
    assert any(str(v).split(":")[1] == "/docker-entrypoint-initdb.d" for v in mounts), mounts
    sql = " ".join(p.read_text() for p in sorted((REPO / "deploy" / "postgres-init").glob("*.sql")))
    created = set(re.findall(r"CREATE\s+DATABASE\s+(\w+)", sql, flags=re.IGNORECASE))
    from sqlalchemy.engine import make_url

    url = make_url(resolved["services"]["airflow-worker"]["environment"][STATE_DB_ENV])
    assert url.database in created, f"deploy/postgres-init creates {created}, the state DB URL names {url.database}"
    airflow_db = make_url(resolved["services"]["airflow-worker"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert url.database != airflow_db.database, "the state must not live in Airflow's metadata database"


# --- Dockerfile -----------------------------------------------------------------------------------------------------


def test_image_tag_matches_the_airflow_pin_and_python() -> None:
    froms = [rest for word, rest in _dockerfile_instructions() if word == "FROM"]
    assert len(froms) == 1, froms
    m = re.fullmatch(r"apache/airflow:(?P<airflow>\d+\.\d+\.\d+)-python(?P<python>\d+\.\d+)", froms[0])
    assert m, f"FROM {froms[0]}: expected apache/airflow:<version>-python<X.Y>"
    pin = re.search(r"^apache-airflow(?:\[[^\]]*\])?==(\S+)", (REPO / "requirements.txt").read_text(), re.MULTILINE)
    pinned = pin[1] if pin else None
    assert pinned == m["airflow"], f"requirements.txt pins apache-airflow {pinned}, the image is {m['airflow']}"
    constraints = (REPO / "constraints.txt").read_text()
    assert f"apache-airflow=={m['airflow']}\n" in constraints
    # constraints.txt is resolved for the project's Python: the floor of requires-python, ruff's target, and (if the
    # file says so in a comment) the Python it names.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    floor = re.fullmatch(r">=\s*(\d+\.\d+)", pyproject["project"]["requires-python"])
    assert floor and floor[1] == m["python"], f"requires-python {pyproject['project']['requires-python']}"
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + m["python"].replace(".", "")
    for named in re.findall(r"^#.*?python\s*(3\.\d+)", constraints, flags=re.IGNORECASE | re.MULTILINE):
        assert named == m["python"], f"constraints.txt says Python {named}, the image has {m['python']}"


def test_dockerfile_installs_the_package_and_bakes_dags_plugins_config() -> None:
    runs = " ".join(rest for word, rest in _dockerfile_instructions() if word == "RUN")
    assert re.search(r"pip install [^&]*-r \S*requirements\.txt -c \S*constraints\.txt", runs), runs
    installs = re.findall(r"pip install ([^&]*--no-deps[^&]*)", runs)
    assert installs, "the package must be installed with pip install --no-deps"
    assert all(" -e " not in f" {i} " and "--editable" not in i for i in installs), "not an editable install"
    copies = {tuple(sources): dest for sources, dest in _copies()}
    assert copies[("dags/",)] == "/opt/airflow/dags/"
    assert copies[("plugins/",)] == "/opt/airflow/plugins/"
    assert ("include/",) in copies and ("pyproject.toml", "README.md") in copies
    config_dest = copies[("config/optimove_netmera.yaml",)]
    assert _dockerfile_env()[CONFIG_ENV] == config_dest


# --- environment of every process ----------------------------------------------------------------------------------


def test_every_airflow_container_shares_state_db_config_keys_and_connections(resolved: dict[str, Any]) -> None:
    from sqlalchemy.engine import make_url

    services = _project_services(resolved)
    assert set(AIRFLOW_COMMANDS) | {"airflow-init", "airflow-cli"} <= set(services), set(services)
    expected = {key: services["airflow-apiserver"]["environment"].get(key) for key in SHARED_KEYS}
    for name, svc in services.items():
        env = svc["environment"]
        for key, value in expected.items():
            assert env.get(key), f"{name} lacks {key}"
            assert env[key] == value, f"{name}: {key} differs from the API server's"
        url = make_url(env[STATE_DB_ENV])
        assert url.get_backend_name() == "postgresql", f"{name}: state DB {url.get_backend_name()}, not PostgreSQL"
        assert url.host in resolved["services"], f"{name}: state DB host {url.host} is not a compose service"
        assert resolved["services"][url.host]["image"].startswith("postgres:")
        assert env[CONFIG_ENV] == _dockerfile_env()[CONFIG_ENV], name
    api = expected["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
    assert api == "http://airflow-apiserver:8080/execution/", api


def _known_airflow_options() -> set[tuple[str, str]]:
    """(section, option) of Airflow core's config.yml and of every installed provider's config."""
    import airflow

    core = yaml.safe_load((Path(airflow.__file__).parent / "config_templates" / "config.yml").read_text())
    known = {(section, option) for section, body in core.items() for option in body.get("options", {})}
    for ep in importlib.metadata.entry_points(group="apache_airflow_provider"):
        info = ep.load()()
        for section, body in (info.get("config") or {}).items():
            known |= {(section, option) for option in body.get("options", {})}
    return known


def test_airflow_options_exist_in_the_installed_airflow(resolved: dict[str, Any]) -> None:
    known = _known_airflow_options()
    for name, svc in _project_services(resolved).items():
        for key in svc["environment"]:
            m = re.fullmatch(r"AIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)", key)
            if not m:
                continue
            section, option = m[1].lower(), m[2].lower()
            if (section, option) not in known:  # the _CMD / _SECRET variants of a sensitive option
                option = option.removesuffix("_cmd").removesuffix("_secret")
            assert (section, option) in known, f"{name}: {key} is no option of Airflow or of an installed provider"


def test_worker_loss_is_detected_within_about_a_minute(resolved: dict[str, Any]) -> None:
    for name, svc in _project_services(resolved).items():
        env = svc["environment"]
        timeout = float(env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"])
        interval = float(env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL"])
        assert 30 <= timeout <= 90, f"{name}: heartbeat timeout {timeout}s"
        assert 0 < interval <= timeout / 4, f"{name}: detection interval {interval}s"
        # Workers heartbeat every [workers] min_heartbeat_interval: many of them must fit in the timeout.
        assert timeout >= 6 * float(env.get("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "5")), name
        assert env["AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER"] == "1", name
        assert env["AIRFLOW__CELERY__TASK_ACKS_LATE"].lower() == "true", name


def test_airflow_init_migrates_both_databases_and_sizes_the_pool(resolved: dict[str, Any]) -> None:
    init = resolved["services"]["airflow-init"]
    assert init["command"][:2] == ["bash", "-c"], init["command"]
    script = init["command"][2]
    assert "airflow db migrate" in script
    assert "python -m optimove_netmera.store upgrade" in script
    assert re.search(r'airflow pools set netmera_api "\$\{NETMERA_POOL_SLOTS\}"', script), script
    assert init["environment"]["NETMERA_POOL_SLOTS"] == _env_example()["NETMERA_POOL_SLOTS"] == "4"
    assert script.startswith("set -euo pipefail\n"), "a failed step must fail airflow-init (and hold the stack)"
    proc = subprocess.run(
        [sys.executable, "-m", "optimove_netmera.store", "upgrade", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


# --- .env.example -----------------------------------------------------------------------------------------------


def test_every_compose_variable_is_documented_or_defaulted() -> None:
    documented = set(_env_example())
    for name, op, _arg in _compose_vars():
        if op in (":-", "-"):
            continue
        assert name in documented, f"docker-compose.yaml reads ${{{name}}}: add it to .env.example"
    for name, op, _arg in _compose_vars():
        if op in (":?", "?"):
            assert name in documented, name


def test_env_example_holds_no_real_secret() -> None:
    text = ENV_EXAMPLE.read_text()
    for key, value in _env_example().items():
        if re.search(r"KEY|SECRET|PASSWORD|TOKEN|CONN|URL", key):
            assert value == "", f".env.example: {key} must be empty (a placeholder), not {value!r}"
    # No token that looks generated (long, mixing lower case, upper case and digits), in values or comments.
    for token in re.findall(r"[A-Za-z0-9+/_=-]{20,}", text):
        mixed = re.search(r"[a-z]", token) and re.search(r"[A-Z]", token) and re.search(r"\d", token)
        assert not mixed, f".env.example contains a secret-looking token {token[:6]}..."


# --- the sandbox profile: connections that really work -----------------------------------------------------------


def _sandbox_config(resolved: dict[str, Any]) -> Any:
    from optimove_netmera.sandbox.__main__ import parse_args

    argv = shlex.split(resolved["services"]["sandbox"]["command"])
    assert argv[:3] == ["python", "-m", "optimove_netmera.sandbox"], argv
    return parse_args(argv[3:])


def _connection(conn_id: str, value: str, *, server_side: bool = False) -> Any:
    """The Connection Airflow builds from AIRFLOW_CONN_<ID>: the Task SDK's class in workers and the triggerer,
    the core model in the API server and scheduler (the env backend deserialises with the class it is given)."""
    from airflow.models import Connection as CoreConnection
    from airflow.sdk import Connection
    from airflow.secrets.environment_variables import EnvironmentVariablesBackend

    cls = CoreConnection if server_side else Connection  # noqa: AIR311 - the server side's class, on purpose
    return EnvironmentVariablesBackend._deserialize_connection_value(cls, conn_id, value)


def test_sandbox_defaults_resolve_to_working_connections(resolved: dict[str, Any]) -> None:
    from optimove_netmera.hooks import OptimoveHook, _base_url

    box = _sandbox_config(resolved)
    assert box.host == "0.0.0.0", "the sandbox must listen on the compose network, not its own loopback"
    for name, svc in _project_services(resolved).items():
        env = svc["environment"]
        optimove = _connection("optimove_default", env[CONN_ENVS["optimove"]])
        netmera = _connection("netmera_default", env[CONN_ENVS["netmera"]])
        assert (optimove.conn_type, netmera.conn_type) == ("optimove", "netmera"), name
        client = OptimoveHook.client_from_connection(optimove)
        assert client.base_url == f"http://sandbox:{box.optimove_port}", name
        assert client.session.headers["X-API-KEY"] == box.optimove_api_key, name
        assert _base_url(netmera.host, netmera.schema, netmera.port, "netmera_default") == (
            f"http://sandbox:{box.netmera_port}"
        ), name
        assert (netmera.extra_dejson.get("api_key") or netmera.password) == box.netmera_api_key, name
        # The API server and scheduler (core Connection model) read them the same way.
        for conn_id, conn in (("optimove_default", optimove), ("netmera_default", netmera)):
            core = _connection(conn_id, env[CONN_ENVS[conn_id.split("_")[0]]], server_side=True)
            assert (core.conn_type, core.host, core.port, core.password, core.extra_dejson) == (
                conn.conn_type,
                conn.host,
                conn.port,
                conn.password,
                conn.extra_dejson,
            ), f"{name}: {conn_id}"
        # The inbound key has no default (never a publicly known key): it is the one .env sets.
        assert env[INBOUND_ENV] == _filled_env()[INBOUND_ENV], name


@pytest.fixture
def live_sandbox(resolved: dict[str, Any], tmp_path: Path) -> Iterator[tuple[Any, int, int]]:
    """The sandbox started with the compose service's own flags, on free loopback ports."""
    from optimove_netmera.sandbox.admin import SandboxAdmin
    from optimove_netmera.sandbox.process import free_port, stop_process

    argv = shlex.split(resolved["services"]["sandbox"]["command"])
    o_port, n_port = free_port(), free_port()
    cmd = [sys.executable, *argv[1:], "--host", "127.0.0.1", "--optimove-port", str(o_port)]
    cmd += ["--netmera-port", str(n_port)]
    with open(tmp_path / "sandbox.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        SandboxAdmin(f"http://127.0.0.1:{o_port}", f"http://127.0.0.1:{n_port}").wait_ready(timeout=120)
        yield _sandbox_config(resolved), o_port, n_port
    finally:
        stop_process(proc, timeout=10)


def test_sandbox_defaults_authenticate_against_the_sandbox(
    resolved: dict[str, Any], live_sandbox: tuple[Any, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resolved connections, pointed at a sandbox run with the compose service's flags, pass the hooks' Test."""
    from optimove_netmera.hooks import NetmeraHook, OptimoveHook

    box, o_port, n_port = live_sandbox
    env = resolved["services"]["airflow-worker"]["environment"]
    optimove = env[CONN_ENVS["optimove"]].replace(f"sandbox:{box.optimove_port}", f"127.0.0.1:{o_port}")
    netmera = env[CONN_ENVS["netmera"]].replace(f"sandbox:{box.netmera_port}", f"127.0.0.1:{n_port}")
    assert optimove != env[CONN_ENVS["optimove"]] and netmera != env[CONN_ENVS["netmera"]]
    monkeypatch.setenv(CONN_ENVS["optimove"], optimove)
    monkeypatch.setenv(CONN_ENVS["netmera"], netmera)
    ok, message = OptimoveHook().test_connection()
    assert ok, message
    ok, message = NetmeraHook().test_connection()
    assert ok, message
