"""A private service stack for a test or a benchmark: Prefect server, worker(s), the API.

`configure_stack` builds one on SQLite or on a fresh PostgreSQL database; `start_stack`
starts it and, if it does not come up, stops it and prints the tails of its logs before
re-raising; `RunningStack` is what tests do with a started stack (submit, wait, find a
job's processes, pause the pool, restart the worker). Stacks run with auth on unless
`auth="off"` is given: `RunningStack.api` then carries the first admin's token (from the
home's admin-token file) and `add_user` gives a client of a new user. Waits that time out raise
AssertionError naming what was awaited.

Servers this test process runs for jobs (the local LM: `start_job_lm`; others:
`reachable_by_jobs`) are allow-listed (DSPY_SERVICE_EGRESS_ALLOW) in every stack configured
after they started; nothing else on loopback is.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx

from deployments.prefect_auth import auth_headers
from deployments.stack import Stack, StackConfig
from dspy_service.egress_policy import url_target
from dspy_service.prefect_http import QUICK_RETRY_DELAYS, QuickRetrySyncTransport
from dspy_service.settings import ServiceSettings
from dspy_service.testing.local_lm import LocalLMServer, start_local_lm
from tests.support.polling import wait_until
from tests.support.postgres import FreshDatabase
from tests.support.prefect_schema import copy_migrated_sqlite, migrated_postgres_template
from tests.support.processes import JobProcesses, engine_pid

TERMINAL = {"success", "failed", "cancelled"}

# The database whose suite stacks (tests/integration's and the hostile suite's) start every
# job cold (warm_start=False): the other runs the default (warm start), and the cold path
# (relay -> forked supervisor -> new sandboxed interpreter) keeps the whole contract too.
COLD_START_DATABASE = "postgres"


# host:port of the servers this process runs for jobs to reach.
JOB_REACHABLE: list[str] = []


def reachable_by_jobs(url: str) -> None:
    """Allow-list the server at `url` in the stacks configured from now on."""
    target = url_target(url)
    assert target is not None, f"not an http(s) URL: {url}"
    JOB_REACHABLE.append(f"{target[0]}:{target[1]}")


def start_job_lm(**options) -> LocalLMServer:
    """The local LM (`start_local_lm` options), reachable by the jobs of stacks configured from now on."""
    server = start_local_lm(**options)
    reachable_by_jobs(server.url)
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def configure_stack(
    home: Path,
    database: str = "sqlite",
    *,
    env: dict[str, str] | None = None,
    warm_start: bool | None = None,
    db_prefix: str = "dspy_service_test_",
    migrated: bool = True,
    **settings,
) -> tuple[Stack, FreshDatabase | None]:
    """A stack (not started) on free ports; on `postgres` it owns a fresh database, which
    the caller drops when done. `settings` are ServiceSettings fields, `env` the
    processes' extra environment; `egress_allow` adds to the servers of `JOB_REACHABLE`;
    `warm_start` None: the service's default (on); `migrated` False: Prefect's database
    starts empty, as on a fresh machine (else a copy of one migrated once per process,
    tests/support/prefect_schema.py)."""
    settings["egress_allow"] = ",".join(filter(None, [*JOB_REACHABLE, settings.get("egress_allow", "")]))
    fresh = None
    if database == "postgres":
        fresh = FreshDatabase.create(db_prefix, migrated_postgres_template() if migrated else None)
    # Tests write dataset_source files into their own temp dirs, next to the stack's home.
    settings.setdefault("dataset_dirs", str(home.parent))
    service = ServiceSettings(home=home, database_url=fresh.url if fresh else None, **settings)
    if migrated and service.database_url is None:
        copy_migrated_sqlite(service.default_sqlite_path)
    config = StackConfig(
        settings=service, api_port=free_port(), prefect_port=free_port(), program_server_port=free_port(),
        warm_start=warm_start,
    )
    stack = Stack(config)
    stack.env.update(env or {})
    return stack, fresh


def admin_headers(stack: Stack) -> dict[str, str]:
    """The Authorization header of the stack's first admin (none when auth is off)."""
    path = stack.config.settings.admin_token_file
    if stack.env.get("DSPY_SERVICE_AUTH") == "off" or not path.exists():
        return {}
    return {"Authorization": f"Bearer {path.read_text().strip()}"}


def start_stack(stack: Stack, timeout: float = 180, progress=lambda _: None) -> float:
    """Start `stack`; if it does not come up, stop it and print the tails of its logs."""
    try:
        return stack.start(timeout=timeout, progress=progress)
    except Exception:
        stack.stop()
        for log in (stack.config.settings.home_dir / "logs").glob("*.log"):
            print(f"==== {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        raise


class RunningStack:
    """A started stack, the HTTP client of its API and one of its Prefect API (`prefect`,
    with the stack's auth string)."""

    def __init__(self, stack: Stack, database: str, fresh: FreshDatabase | None = None):
        self.stack = stack
        self.database = database
        self.fresh = fresh
        self.api = httpx.Client(base_url=stack.config.api_url, timeout=60, headers=admin_headers(stack))
        self.env = stack.env
        self.prefect = prefect_http_client(stack)
        self._clients: list[httpx.Client] = []

    @classmethod
    def start(cls, home: Path, database: str = "sqlite", **options) -> RunningStack:
        """Configure (see `configure_stack`) and start a stack."""
        stack, fresh = configure_stack(home, database, **options)
        try:
            start_stack(stack)
        except Exception:
            if fresh:
                fresh.drop()
            raise
        return cls(stack, database, fresh)

    def client(self, token: str | None = None) -> httpx.Client:
        """A client of this stack's API sending `token` (none: unauthenticated); closed on stop."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.stack.config.api_url, timeout=60, headers=headers)
        self._clients.append(client)
        return client

    def add_user(self, name: str, admin: bool = False) -> httpx.Client:
        """Create the user (POST /users as the admin); a client sending their token."""
        response = self.api.post("/users", json={"username": name, "admin": admin})
        assert response.status_code == 201, response.text
        return self.client(response.json()["token"])

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self.api.close()
        self.prefect.close()
        try:
            self.stack.stop()
        finally:
            if self.fresh:
                self.fresh.drop()

    def submit(self, payload: dict, **kwargs) -> str:
        response = self.api.post("/run", json=payload, **kwargs)
        assert response.status_code == 201, response.text
        return response.json()["job_id"]

    def flow_run(self, job_id: str) -> dict:
        return self.prefect.get(f"/flow_runs/{job_id}").json()

    def wait_for_status(self, job_id: str, statuses: set[str], timeout: float = 180, seen: list | None = None):
        """The job's summary once its status is one of `statuses`; `seen` collects each
        status it passed through, in order."""
        last: dict = {}

        def reached():
            last.update(self.api.get(f"/jobs/{job_id}/summary").json())
            if seen is not None and (not seen or seen[-1] != last["status"]):
                seen.append(last["status"])
            return dict(last) if last["status"] in statuses else None

        return wait_until(reached, timeout, what=lambda: f"job {job_id} to be in {statuses}: {last}")

    def wait_terminal(self, job_id: str, timeout: float = 180) -> dict:
        return self.wait_for_status(job_id, TERMINAL, timeout=timeout)

    def wait_state(self, job_id: str, state_types: set[str], timeout: float = 60) -> dict:
        """The flow run once Prefect has it in one of `state_types` (e.g. CANCELLED)."""
        last: dict = {}

        def reached():
            last.update(self.flow_run(job_id))
            return dict(last) if last.get("state_type") in state_types else None

        return wait_until(reached, timeout, 0.1, what=lambda: f"{job_id} in {state_types}: {last.get('state')}")

    def wait_healthy(self, timeout: float = 120) -> None:
        def healthy() -> bool:
            try:
                return self.api.get("/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout, 0.5, what="the stack to be healthy")

    def processes(self, job_id: str, timeout: float = 90) -> JobProcesses:
        """The job's engine (it logs its pid), its supervisor and the worker's relay process."""
        return JobProcesses.of_engine(engine_pid(self.api, job_id, timeout), job_id)

    def worker_pid(self) -> int:
        process = self.stack.workers[0].process
        assert process is not None and process.poll() is None, "the worker is not running"
        return process.pid

    def restart_worker(self) -> None:
        worker = self.stack.workers[0]
        if worker.alive:
            worker.stop()
        elif worker.process is not None:
            worker.process.wait(10)
        worker.start(self.env)
        self.wait_healthy()

    @contextlib.contextmanager
    def prefect_client(self) -> Iterator:
        """Prefect's sync client, pointed at this stack's server."""
        from prefect.client.orchestration import get_client

        with prefect_settings(self.stack), get_client(sync_client=True) as client:
            yield client

    @contextlib.contextmanager
    def paused_work_pool(self) -> Iterator[None]:
        """The work pool paused meanwhile: submitted jobs stay pending, none runs."""
        from prefect.client.schemas.actions import WorkPoolUpdate

        pool = self.stack.config.settings.work_pool
        with self.prefect_client() as client:
            client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
        try:
            yield
        finally:
            with self.prefect_client() as client:
                client.update_work_pool(pool, WorkPoolUpdate(is_paused=False))


# A SQLite-backed Prefect answers a write that loses a race with another write with 503 and
# rolls it back: retried as the service's own clients retry it (dspy_service/prefect_http.py),
# then as Prefect's client does (2 s, 4 s).
TEST_CLIENT_RETRY_DELAYS = (*QUICK_RETRY_DELAYS, 2.0, 4.0)


def prefect_http_client(stack: Stack) -> httpx.Client:
    """An HTTP client of the stack's Prefect API that sends its auth string."""
    return httpx.Client(
        base_url=stack.config.prefect_api_url,
        headers=auth_headers(stack.prefect_auth),
        timeout=30,
        transport=QuickRetrySyncTransport(delays=TEST_CLIENT_RETRY_DELAYS),
    )


def prefect_settings(stack: Stack):
    """Prefect's settings, for clients made in this process meanwhile, pointed at the stack's server."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    settings = {PREFECT_API_URL: stack.config.prefect_api_url, PREFECT_API_AUTH_STRING: stack.prefect_auth}
    return temporary_settings(settings)
