"""What code inside a job's sandbox sees, checked with real bubblewrap (installed by `make
test`): no host process, no service home, no network but its own loopback, no capability,
read-only code, its own writable work directory and mounts; and what its environment keeps."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from deployments.runtime.sandbox import (
    SANDBOX_WORK_DIR,
    JobDirectory,
    Mount,
    SandboxLayout,
    bwrap_command,
    hidden_inside_mounts,
    project_root,
    sandbox_environment,
)
from dspy_service.contract import SANDBOXED_ENV
from dspy_service.sandbox_check import bubblewrap_problem

PROBE = textwrap.dedent(
    """
    import json, os, socket, sys
    def attempt(action):
        try:
            return repr(action())
        except Exception as exc:
            return f"denied: {type(exc).__name__}"
    def connect(port):
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return "connected"
    def write(path):
        with open(path, "w") as handle:
            return handle.write("x")
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    print(json.dumps({
        "uid": os.getuid(),
        "cap_eff": status["CapEff"].strip(),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "home": attempt(lambda: os.listdir(sys.argv[1])),
        "secret": attempt(lambda: open(sys.argv[2]).read()),
        "host_port": attempt(lambda: connect(int(sys.argv[3]))),
        "write_code": attempt(lambda: write(sys.argv[4])),
        "write_work": attempt(lambda: write("/job/out.txt")),
        "write_mount": attempt(lambda: write(sys.argv[5] + "/result")),
        "read_mount": attempt(lambda: open(sys.argv[6]).read()),
        "write_read_only_mount": attempt(lambda: write(sys.argv[6])),
        "shadow": attempt(lambda: open("/etc/shadow").read()),
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
    }))
    """
)


@pytest.fixture(scope="module")
def bubblewrap():
    problem = bubblewrap_problem()
    assert problem is None, problem  # `make test` installs bubblewrap; a sandbox test must not skip


def test_code_in_the_sandbox_sees_only_its_own_job(bubblewrap, tmp_path):
    home = tmp_path / "home"
    (home / "storage").mkdir(parents=True)
    secret = home / "prefect.db"
    secret.write_text("every tenant's keys")
    results = tmp_path / "results-of-this-job"
    results.mkdir()
    dataset = tmp_path / "dataset.json"
    dataset.write_text('[{"q": 1}]')
    directory = JobDirectory(tmp_path / "jobs", "run-1")
    layout = SandboxLayout(
        job_dir=directory.path,
        mounts=[Mount(results, writable=True, target=tmp_path / "results"), Mount(dataset)],
    )
    listener = socket.create_server(("127.0.0.1", 0))
    script = directory.path / "work" / "probe.py"
    script.write_text(PROBE)
    argv = [
        sys.executable, f"{SANDBOX_WORK_DIR}/probe.py", str(home), str(secret), str(listener.getsockname()[1]),
        str(project_root() / "flows" / "planted.py"), str(tmp_path / "results"), str(dataset),
    ]
    try:
        done = subprocess.run(bwrap_command(layout, argv), capture_output=True, text=True, timeout=60)
    finally:
        listener.close()
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["uid"] == 65534 and int(seen["cap_eff"], 16) == 0
    assert len(seen["pids"]) <= 3  # the sandbox's init, this process (and nothing of the host)
    assert seen["home"].startswith("denied") and seen["secret"].startswith("denied")
    assert seen["host_port"].startswith("denied") and seen["interfaces"] == ["lo"]
    assert seen["write_code"].startswith("denied") and not (project_root() / "flows" / "planted.py").exists()
    assert seen["shadow"].startswith("denied")
    assert seen["write_work"] == "1" and (directory.path / "work" / "out.txt").read_text() == "x"
    assert seen["write_mount"] == "1" and (results / "result").read_text() == "x"
    assert seen["read_mount"] == repr('[{"q": 1}]') and seen["write_read_only_mount"].startswith("denied")
    directory.remove()
    assert not directory.path.exists()


def test_a_service_home_inside_a_read_only_mount_is_hidden():
    inside = project_root() / "flows" / "home"
    assert hidden_inside_mounts([inside]) == [inside.resolve()]
    assert hidden_inside_mounts([project_root().parent / "elsewhere"]) == []


def test_the_engine_environment_keeps_no_prefect_credentials_and_points_at_the_bridges():
    env = sandbox_environment(
        {
            "PREFECT_API_URL": "http://10.0.0.5:4200/api",
            "PREFECT_API_AUTH_STRING": "admin:pw",
            "PREFECT_API_DATABASE_CONNECTION_URL": "postgresql://u:pw@db/prefect",
            "PREFECT_SERVER_API_AUTH_STRING": "admin:pw",
            "DSPY_SERVICE_DATABASE_URL": "postgresql://u:pw@db/prefect",
            "PREFECT__FLOW_RUN_ID": "abc",
            "PREFECT_LOCAL_STORAGE_PATH": "/srv/results",
            "HTTPS_PROXY": "http://corporate:3128",
            "DSPY_SERVICE_LOG_LEVEL": "INFO",
        }
    )
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert not {"PREFECT_API_AUTH_STRING", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_API_AUTH_STRING",
                "DSPY_SERVICE_DATABASE_URL"} & env.keys()
    assert env["HTTPS_PROXY"] == env["http_proxy"] == "http://127.0.0.1:3128"
    assert env["PREFECT__FLOW_RUN_ID"] == "abc" and env["PREFECT_LOCAL_STORAGE_PATH"] == "/srv/results"
    assert env[SANDBOXED_ENV] == "1" and env["HOME"] == SANDBOX_WORK_DIR


def test_the_private_tmp_is_mounted_before_the_code_so_a_checkout_under_tmp_stays_visible(tmp_path):
    command = bwrap_command(SandboxLayout(job_dir=tmp_path), ["true"])
    tmpfs = command.index("/tmp", command.index("--tmpfs"))
    first_bind = command.index("--ro-bind")
    assert tmpfs < first_bind
