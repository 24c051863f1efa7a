"""Checks of the deployment files: local_infra/docker-compose.yml,
local_infra/Dockerfile, local_infra/.env.example and .dockerignore. No Docker
engine and no network: Compose itself (`docker-compose config`, v1 as Debian
ships it: `make install_compose`) validates the compose file and resolves it
with the .env.example values, and the services are checked as resolved.
What Compose does not check (the variables against .env.example and the
programs, the Dockerfile, .dockerignore) is checked from the files."""

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from hks.core import flags
from hks.mongo import mongo_settings

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "local_infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
DOCKERFILE = INFRA / "Dockerfile"
ENV_EXAMPLE = INFRA / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

MONGO = "hks_mongo_db"
DRIVER = "hks_hyperopt"
WORKER = "hks_hyperopt_worker"
WORKER_CPU = "hks_hyperopt_worker_cpu"
APPS = [DRIVER, WORKER, WORKER_CPU]
WORKERS = [WORKER, WORKER_CPU]
SCRIPTS = {DRIVER: "hyperopt_optimize.py", WORKER: "hyperopt_mongo_worker.py",
           WORKER_CPU: "hyperopt_mongo_worker.py"}


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose):
    """The services as written (variables not substituted)."""
    return compose["services"]


def compose_config(*flags):
    """`docker-compose --env-file .env.example [flags] config`, run in
    local_infra/ as a user would: the resolved file, parsed."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (make install_compose)")
    done = subprocess.run(["docker-compose", "--env-file", ENV_EXAMPLE.name, *flags, "config"],
                          cwd=INFRA, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"Compose refuses the file:\n{done.stderr}"
    return yaml.safe_load(done.stdout)


@pytest.fixture(scope="module")
def resolved():
    """The compose file as Compose resolves it, with the cpu profile."""
    return compose_config("--profile", "cpu")


@pytest.fixture(scope="module")
def resolved_services(resolved):
    return resolved["services"]


# --- helpers: compose's syntaxes, read the way compose reads them ---

# $$ is a literal $; ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err},
# ${VAR?err}, ${VAR:+alt}, ${VAR+alt} and $VAR are variables.
INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")


def strings_in(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings_in(key)
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)


def compose_variables(compose):
    """{variable: [(operator or None, argument), ...]} for every interpolation."""
    found = {}
    for text in strings_in(compose):
        for match in INTERPOLATION.finditer(text):
            if match.group(0) == "$$":
                continue
            name = match.group("braced") or match.group("bare")
            found.setdefault(name, []).append((match.group("op"), match.group("arg")))
    return found


def compose_defaults(compose):
    """{variable: default} for variables written ${VAR:-default} or ${VAR-default}."""
    defaults = {}
    for name, uses in compose_variables(compose).items():
        values = {arg for op, arg in uses if op in (":-", "-")}
        assert len(values) <= 1, f"{name} has different defaults: {sorted(values)}"
        if values:
            defaults[name] = values.pop()
    return defaults


def env_example():
    """{variable: (value, the comment lines and assignments of its paragraph)}."""
    found, paragraph = {}, []
    for line in ENV_EXAMPLE.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            paragraph = []
            continue
        paragraph.append(stripped)
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", stripped)
        if match:
            assert match.group(1) not in found, f"{match.group(1)} is set twice"
            found[match.group(1)] = (match.group(2), list(paragraph))
        else:
            assert stripped.startswith("#"), f".env.example: not a comment or VAR=: {line!r}"
    return found


def environment(service):
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def mounts(service):
    """[(source, target, read_only)] of a service's volumes, short or long syntax."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found.append((volume.get("source"), volume["target"],
                          bool(volume.get("read_only", False))))
            continue
        parts = volume.split(":")
        if len(parts) == 1:
            found.append((None, parts[0], False))
        else:
            options = parts[2].split(",") if len(parts) > 2 else []
            found.append((parts[0], parts[1], "ro" in options))
    return found


def command_argv(service):
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def without_keys(mapping, *keys):
    return {key: value for key, value in mapping.items() if key not in keys}


# --- the compose file ---

def test_compose_v1_and_v2_both_read_the_file(compose, resolved):
    """No `version:` (obsolete in v2) and no `name:` (v2 only: v1 refuses
    the whole file); the project's name comes from COMPOSE_PROJECT_NAME."""
    assert "version" not in compose and "name" not in compose
    assert set(resolved["services"]) == set(APPS + [MONGO])
    assert env_example()["COMPOSE_PROJECT_NAME"][0] == "hyperopt-keras-cifar100"


def test_compose_resolves_the_file_without_the_cpu_profile_too():
    assert set(compose_config()["services"]) >= {MONGO, DRIVER, WORKER}


def test_compose_refuses_to_start_without_the_mongodb_credentials(tmp_path):
    """The credentials are ${VAR:?message}: Compose stops with the message."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (make install_compose)")
    env_file = tmp_path / "no-password.env"
    env_file.write_text("\n".join(line for line in ENV_EXAMPLE.read_text().splitlines()
                                  if not line.startswith("MONGO_INITDB_ROOT_PASSWORD=")))
    done = subprocess.run(["docker-compose", "--env-file", str(env_file), "config"], cwd=INFRA,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "set MONGO_INITDB_ROOT_PASSWORD in local_infra/.env" in done.stderr


def test_the_services_exist_and_only_the_cpu_worker_is_behind_a_profile(services):
    assert set(APPS + [MONGO]) <= set(services)
    assert "cpu" in services[WORKER_CPU].get("profiles", [])
    for name in (MONGO, DRIVER, WORKER):
        assert not services[name].get("profiles"), f"{name} would not start by default"


def test_mongo_image_is_pinned_to_major_version_8(services):
    image = services[MONGO]["image"]
    match = re.fullmatch(r"mongo:(\d+)(\.\d+){0,2}(@sha256:[0-9a-f]{64})?", image)
    assert match, f"{image!r} is not mongo:<major>[.<minor>] (a moving tag like latest?)"
    assert match.group(1) == "8"


def test_mongo_data_is_on_a_declared_named_volume(resolved, resolved_services):
    data = [(source, ro) for source, target, ro in mounts(resolved_services[MONGO])
            if target == "/data/db"]
    assert len(data) == 1, "/data/db is not mounted: a restart would lose the trials"
    source, read_only = data[0]
    assert source and not source.startswith((".", "/", "~")), f"{source!r} is not a named volume"
    assert source in (resolved.get("volumes") or {}), f"volume {source!r} is not declared"
    assert not read_only


def test_no_service_publishes_a_port_nor_uses_the_hosts_network(resolved_services):
    for name, service in resolved_services.items():
        assert service.get("network_mode") != "host", f"{name} uses the host's network"
        assert not service.get("ports"), f"{name} publishes {service['ports']!r}"


def test_mongo_is_on_an_internal_network_with_the_apps(resolved, resolved_services):
    networks = resolved.get("networks") or {}
    mongo_networks = set(resolved_services[MONGO].get("networks", []))
    internal = {name for name in mongo_networks if (networks.get(name) or {}).get("internal")}
    assert internal, "MongoDB is not on a declared internal network"
    for name in APPS:
        assert internal & set(resolved_services[name].get("networks", [])), \
            f"{name} cannot reach MongoDB"


def test_mongo_has_a_ping_healthcheck(services):
    check = services[MONGO].get("healthcheck")
    assert check and not check.get("disable")
    test = check["test"]
    text = " ".join(test) if isinstance(test, list) else test
    assert "mongosh" in text and "ping" in text
    for key in ("interval", "timeout", "retries", "start_period"):
        assert key in check, f"healthcheck without {key}"
    assert services[MONGO].get("restart") == "unless-stopped"


@pytest.mark.parametrize("name", APPS)
def test_driver_and_workers_wait_for_a_healthy_mongo(resolved_services, name):
    depends = resolved_services[name].get("depends_on")
    assert isinstance(depends, dict), f"{name}: depends_on must use the long syntax"
    assert depends[MONGO]["condition"] == "service_healthy"


def test_mongo_credentials_are_required_and_shared(services):
    variables = compose_variables({"s": services})
    for name in ("MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD"):
        assert variables[name] and all(op in (":?", "?") for op, _ in variables[name]), \
            f"{name} must be ${{{name}:?...}}: a missing value would be an empty one"
    mongo_env = environment(services[MONGO])
    for app in APPS:
        env = environment(services[app])
        assert env["MONGO_DB_HOST"] == MONGO
        assert str(env["MONGO_DB_PORT"]) == "27017"
        assert env["MONGO_DB_USER"] == mongo_env["MONGO_INITDB_ROOT_USERNAME"]
        assert env["MONGO_DB_PASSWORD"] == mongo_env["MONGO_INITDB_ROOT_PASSWORD"]
        assert "${EXPERIMENT_NAME" in env["EXPERIMENT_NAME"]


@pytest.mark.parametrize("name", WORKERS)
def test_workers_are_scalable(services, name):
    assert "container_name" not in services[name]
    assert not services[name].get("ports")
    assert services[name].get("restart") == "on-failure"


def test_the_gpu_worker_reserves_nvidia_gpus(resolved_services):
    worker = resolved_services[WORKER]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", [])
               and (device.get("count") == "all" or device.get("device_ids"))
               for device in devices)
    assert str(environment(worker)["TF_FORCE_GPU_ALLOW_GROWTH"]).lower() == "true"


def test_the_cpu_worker_is_the_gpu_worker_without_a_gpu(resolved_services):
    cpu = resolved_services[WORKER_CPU]
    devices = ((cpu.get("deploy") or {}).get("resources") or {}).get("reservations", {})
    assert not devices.get("devices") and "gpus" not in cpu and "runtime" not in cpu
    assert cpu.get("profiles") == ["cpu"]
    assert without_keys(cpu, "deploy", "profiles") == without_keys(
        resolved_services[WORKER], "deploy", "profiles")


def test_the_driver_needs_neither_gpu_nor_data_set(services):
    driver = services[DRIVER]
    assert "deploy" not in driver and "gpus" not in driver
    assert not any(target == "/app/ml_req" for _, target, _ in mounts(driver))


@pytest.mark.parametrize("name", WORKERS)
def test_workers_mount_the_data_set_and_the_results(resolved_services, name):
    """ml_req/ is writable: the decoded copy of the archive is kept there."""
    found = {target: (source, ro) for source, target, ro in mounts(resolved_services[name])}
    env = environment(resolved_services[name])
    assert found[env["HKS_DATA_DIR"]] == (str(ROOT / "ml_req"), False)
    assert found[env["HKS_RESULTS_DIR"]] == (str(ROOT / "results"), False)


def test_the_driver_mounts_the_results(resolved_services):
    found = {target: (source, ro) for source, target, ro in mounts(resolved_services[DRIVER])}
    assert found["/app/results"] == (str(ROOT / "results"), False)


def test_services_share_one_image_built_from_the_repository_root(resolved_services):
    builds = [resolved_services[name]["build"] for name in APPS]
    assert all(build == builds[0] for build in builds)
    assert len({resolved_services[name]["image"] for name in APPS}) == 1
    assert Path(builds[0]["context"]).resolve() == ROOT
    assert (ROOT / builds[0]["dockerfile"]).resolve() == DOCKERFILE


@pytest.mark.parametrize("name", APPS)
def test_commands_run_the_project_scripts(services, name):
    assert command_argv(services[name]) == ["python3", SCRIPTS[name]]


@pytest.mark.parametrize("script", sorted(set(SCRIPTS.values())))
def test_the_scripts_exist_at_the_repository_root(script):
    assert (ROOT / script).is_file(), f"{script} is missing"


# --- variables: compose <-> .env.example <-> the program ---

def test_every_compose_variable_is_documented_in_env_example_and_back(compose):
    used = set(compose_variables(compose))
    documented = set(env_example()) - {"COMPOSE_PROJECT_NAME"}  # read by Compose itself
    assert used - documented == set(), "used by compose but not in .env.example"
    assert documented - used == set(), "in .env.example but never used by compose"


def test_env_example_comments_every_variable_with_its_default():
    for name, (_, paragraph) in env_example().items():
        comments = " ".join(line for line in paragraph if line.startswith("#"))
        assert comments, f"{name} has no comment"
        assert "default" in comments.lower() or "required" in comments.lower(), \
            f"{name}: its comment does not give the default"


def test_env_example_values_are_the_compose_defaults(compose):
    defaults = compose_defaults(compose)
    for name, (value, _) in env_example().items():
        if name in defaults:
            assert value == defaults[name], f"{name}={value!r}, compose default {defaults[name]!r}"
        else:
            assert value, f"{name} is required by compose but empty in .env.example"


def test_env_example_password_is_a_placeholder_to_change():
    value, paragraph = env_example()["MONGO_INITDB_ROOT_PASSWORD"]
    assert value and "change" in (value + " ".join(paragraph)).lower()


DRIVER_SETTINGS = (flags.SearchSettings, mongo_settings.DriverSettings)
WORKER_SETTINGS = (mongo_settings.WorkerSettings,)


def option_env_vars(kinds):
    """{environment variable: (settings class, field name)} of these settings classes."""
    return {option.env: (kind, name) for kind in kinds
            for name, option in flags.options_of(kind).items()}


MONGO_PARTS = {"MONGO_DB_HOST", "MONGO_DB_PORT", "MONGO_DB_NAME", "MONGO_DB_USER",
               "MONGO_DB_PASSWORD", "MONGO_DB_AUTH_SOURCE"}


def test_the_programs_read_every_variable_compose_gives_them(services):
    driver_vars = set(option_env_vars(DRIVER_SETTINGS))
    worker_vars = set(option_env_vars(WORKER_SETTINGS))
    unread = set(environment(services[DRIVER])) - driver_vars - MONGO_PARTS - {"CODE_TESTING"}
    assert unread == set(), "the driver does not read these"
    for name in WORKERS:
        unread = (set(environment(services[name])) - worker_vars - MONGO_PARTS
                  - {"TF_FORCE_GPU_ALLOW_GROWTH"})
        assert unread == set(), f"{name} does not read these"


def test_compose_defaults_are_the_programs_defaults(compose, services):
    defaults = compose_defaults(compose)
    checked = 0
    for service in APPS:  # HKS_DATASET: the driver's data set, a worker's own
        by_var = option_env_vars(DRIVER_SETTINGS if service == DRIVER else WORKER_SETTINGS)
        for key, value in environment(services[service]).items():
            match = INTERPOLATION.fullmatch(str(value))
            if not match or match.group(0) == "$$":
                continue
            variable = match.group("braced") or match.group("bare")
            if key in by_var and defaults.get(variable):
                kind, name = by_var[key]
                parse = flags.options_of(kind)[name].parse
                assert parse(defaults[variable]) == flags.defaults_of(kind)[name], key
                checked += 1
    assert checked >= 5
    assert defaults["MONGO_DB_NAME"] == mongo_settings.MONGO_DEFAULT_DB


# --- the Dockerfile ---

def dockerfile_instructions():
    """[(INSTRUCTION, arguments)], continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines()
             if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\s*\n", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2).strip())
            for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.M)]


def index_of(instructions, predicate):
    return next(i for i, item in enumerate(instructions) if predicate(*item))


def test_dockerfile_starts_from_a_pinned_python_311_slim_image():
    instructions = dockerfile_instructions()
    froms = [args for op, args in instructions if op == "FROM"]
    assert len(froms) == 1
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?",
                        froms[0].split()[0]), froms[0]


def test_dockerfile_apt_installs_graphviz_and_cleans_up():
    runs = [args for op, args in dockerfile_instructions() if op == "RUN"]
    apt = [run for run in runs if "apt-get install" in run]
    assert apt and "graphviz" in apt[0] and "--no-install-recommends" in apt[0]
    assert "rm -rf /var/lib/apt/lists" in apt[0]


def requirement_chain(name, seen=()):
    """The requirements files `name` pulls in through -r, itself included."""
    assert name not in seen, f"-r loop through {name}"
    files = [name]
    for line in (ROOT / name).read_text().splitlines():
        match = re.match(r"\s*(?:-r|--requirement)\s*=?\s*(\S+)", line)
        if match:
            files += requirement_chain(match.group(1), seen + (name,))
    return files


def test_dockerfile_installs_the_requirements_before_copying_the_code():
    instructions = dockerfile_instructions()
    args = dict(re.fullmatch(r"(\w+)(?:=(.*))?", a).groups() for op, a in instructions
                if op == "ARG")
    assert args["REQUIREMENTS"] == "requirements-gpu.txt"
    pip = index_of(instructions, lambda op, a: op == "RUN" and "pip install" in a)
    pip_args = instructions[pip][1]
    assert "--no-cache-dir" in pip_args and re.search(r"-r\s+\"?\$\{?REQUIREMENTS", pip_args)
    copied = set()
    for op, a in instructions[:pip]:
        if op == "COPY":
            copied.update(a.split()[:-1])
    # Both choices of the build argument install requirements.txt, and every
    # file they read is in the image before pip runs.
    for choice in ("requirements-gpu.txt", "requirements.txt"):
        chain = requirement_chain(choice)
        assert "requirements.txt" in chain
        assert set(chain) <= copied, f"{choice} needs {chain}, copied before pip: {copied}"
    assert "tensorflow[and-cuda]" in (ROOT / "requirements-gpu.txt").read_text()
    code = index_of(instructions, lambda op, a: op == "COPY" and a.split()[0] == ".")
    assert code > pip, "the code is copied before pip install: every edit reinstalls"


def test_dockerfile_runs_unbuffered_in_app_as_a_non_root_user_without_secrets():
    instructions = dockerfile_instructions()
    assert ("WORKDIR", "/app") in instructions
    env = " ".join(a for op, a in instructions if op == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)
    users = [a for op, a in instructions if op == "USER"]
    assert users, "the image runs as root"
    user = users[-1].split(":")[0]
    args = dict(re.fullmatch(r"(\w+)(?:=(.*))?", a).groups() for op, a in instructions
                if op == "ARG")
    user = args.get(user.strip("${}"), user) if user.startswith("$") else user
    assert user not in ("0", "root"), "the default user is root"
    for op, a in instructions:
        if op in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN", a, re.I), f"{op} {a}"


# --- .dockerignore ---

def dockerignore_patterns():
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            exclude = not line.startswith("!")
            pattern = line.lstrip("!").strip().strip("/")
            regex = ""
            i = 0
            while i < len(pattern):
                if pattern.startswith("**/", i):
                    regex, i = regex + "(?:.*/)?", i + 3
                elif pattern.startswith("**", i):
                    regex, i = regex + ".*", i + 2
                elif pattern[i] == "*":
                    regex, i = regex + "[^/]*", i + 1
                elif pattern[i] == "?":
                    regex, i = regex + "[^/]", i + 1
                elif pattern[i] == "[":
                    end = pattern.index("]", i)
                    regex, i = regex + pattern[i:end + 1], end + 1
                else:
                    regex, i = regex + re.escape(pattern[i]), i + 1
            patterns.append((re.compile(regex), exclude))
    return patterns


def ignored(path, patterns):
    """Docker's rule: the last pattern matching the path or one of its parent
    folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for regex, exclude in patterns:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            verdict = exclude
    return verdict


@pytest.mark.parametrize("path, expected", [
    (".venv/bin/python", True), (".git/HEAD", True),
    ("ml_req/cifar-100-python.tar.gz", True), ("ml_req/cifar-100-python.decoded.npz", True),
    ("ml_req/cifar-100-python/train", True), ("results/model_0.5_abcde.txt.json", True),
    ("results.pkl", True), ("TensorBoard/model/events", True), ("weights/best.keras", True),
    ("__pycache__/utils.cpython-311.pyc", True), ("tests/__pycache__/x.pyc", True),
    (".pytest_cache/v/cache", True), ("local_infra/.env", True),
    ("hyperopt_optimize.py", False), ("neural_net.py", False), ("utils.py", False),
    ("hks/core/flags.py", False), ("hks/mongo/mongo_search.py", False),
    ("hks/core/__pycache__/flags.cpython-311.pyc", True),
    ("requirements.txt", False), ("requirements-gpu.txt", False),
])
def test_dockerignore_keeps_data_results_and_secrets_out_of_the_image(path, expected):
    assert ignored(path, dockerignore_patterns()) is expected


# --- git ---

def test_env_file_is_git_ignored_and_the_example_is_not():
    def git_ignores(path):
        done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode in (0, 1), done.stderr
        return done.returncode == 0
    assert git_ignores("local_infra/.env"), "local_infra/.env (passwords) is not git-ignored"
    assert not git_ignores("local_infra/.env.example")
