"""`dspy-service`: start the whole service, run a worker, submit the demo job.

    dspy-service up                 # Prefect server (SQLite) + pool/deployment + worker + API + local LM
    dspy-service demo               # submit the offline demo job to a running service and follow it
    dspy-service demo --real-model  # the same on a real small model served here (the `real-lm` extra)
    dspy-service worker             # one more worker (e.g. on another host) for PREFECT_API_URL
                                    # (+ PREFECT_API_AUTH_STRING; default: this home's)
    dspy-service up --cold-start    # no warm-start zygote: every job starts fresh interpreters (also: worker)
    dspy-service register           # (re)register the work pool and the deployment
    dspy-service local-lm           # the deterministic local LM alone (tests and demo only)
    dspy-service users add NAME     # a user and their API token (also: users list/revoke/rotate)
    dspy-service submit job.yaml    # submit a job file over HTTP (--wait: follow it)
    dspy-service estimate job.yaml  # what it would cost: LM calls, tokens, dollars (runs nothing)
    dspy-service jobs list          # also: jobs show/logs/watch/cancel/delete/artifact ID

A command that cannot start what it was asked to (a busy port, a zygote that does not come
up) or whose demo job does not succeed prints `error: ...` on stderr and exits with 1. The
`jobs` and `submit` commands (deployments/jobs_cli.py) talk HTTP only, through
dspy_service.client; their exit codes tell the class of error (deployments/exit_codes.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

import httpx

from deployments.estimate_cli import add_estimate_parser
from deployments.jobs_cli import add_jobs_parser, add_submit_parser
from deployments.users_cli import add_users_parser, api_token
from dspy_service.sandbox_check import startup_check
from dspy_service.settings import get_settings
from dspy_service.testing.real_lm.server import DEMO_PORT as REAL_MODEL_DEMO_PORT


def cmd_up(args: argparse.Namespace) -> int:
    from deployments.stack import Stack, StackConfig

    settings = get_settings()
    if args.slots:
        settings.job_slots = args.slots
    if args.warm_start is not None:
        settings.warm_start = args.warm_start
    config = StackConfig(
        settings=settings,
        api_host=args.host,
        api_port=args.api_port,
        prefect_port=args.prefect_port,
        workers=args.workers,
        local_lm_port=None if args.no_local_lm else args.local_lm_port,
    )
    stack = Stack(config)
    stopping = False

    def request_stop(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    database = "PostgreSQL" if not settings.uses_sqlite else "SQLite"
    print(f"dspy-service home: {settings.home_dir} (Prefect database: {database})", flush=True)
    try:
        seconds = stack.start(progress=lambda m: print(m, flush=True))
        print(
            f"\ndspy-service is up in {seconds:.1f} s\n"
            f"  API        {config.api_url}  (docs: {config.api_url}/docs)\n"
            f"  Prefect UI http://127.0.0.1:{config.prefect_port}  "
            f"(log in with the auth string in {settings.prefect_auth_file})\n"
            + (f"  local LM   {config.local_lm_url}  (test/demo model, not a real LM)\n" if config.local_lm_url else "")
            + f"  logs       {settings.home_dir / 'logs'}\n"
            + admin_token_line(settings)
            + "Try `dspy-service demo` in another terminal. Ctrl-C stops everything.",
            flush=True,
        )
        if args.demo:
            run_demo(
                config.api_url, config.local_lm_url or args.lm_url, optimizer=args.demo_optimizer, token=api_token()
            )
        stack.watch(lambda: stopping, progress=lambda m: print(m, flush=True))
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        stack.stop()
        return 1
    print("stopping ...", flush=True)
    stack.stop()
    print("stopped", flush=True)
    return 0


def admin_token_line(settings) -> str:
    if settings.auth == "off":
        return "  auth       off: no tokens, loopback only (DSPY_SERVICE_AUTH=off)\n"
    if settings.admin_token_file.exists():
        return f"  admin token {settings.admin_token_file}  (send `Authorization: Bearer <token>`)\n"
    return "  admin token an admin exists already; `dspy-service users add NAME` makes more users\n"


def demo_payload(lm_url: str, optimizer: str = "bootstrap", rows: int = 60) -> dict[str, Any]:
    from dspy_service.testing.local_lm import ARITHMETIC_METRIC_CODE, ARITHMETIC_SIGNATURE_CODE, make_arithmetic_dataset

    payload: dict[str, Any] = {
        "username": "demo",
        "module_name": "predict",
        "signature_code": ARITHMETIC_SIGNATURE_CODE,
        "metric_code": ARITHMETIC_METRIC_CODE,
        "optimizer_name": optimizer,
        "optimizer_kwargs": {},
        "dataset": make_arithmetic_dataset(rows, seed=7),
        "column_mapping": {"inputs": {"question": "question"}, "outputs": {"answer": "answer"}},
        "split_fractions": {"train": 0.5, "val": 0.2, "test": 0.3},
        "seed": 7,
        "model_config": {"name": "openai/local-arithmetic", "base_url": lm_url, "extra": {"api_key": "local"}},
    }
    if optimizer == "gepa":
        payload["reflection_model_config"] = payload["model_config"]
        payload["optimizer_kwargs"] = {"max_metric_calls": 60}
    return payload


def run_demo(
    api_url: str | None,
    lm_url: str,
    optimizer: str = "bootstrap",
    timeout: float = 600,
    token: str | None = None,
    progress: bool = True,
    payload: dict[str, Any] | None = None,
    what: str | None = None,
) -> dict[str, Any]:
    """Submit the demo job (`payload`, default: `optimizer` on the local arithmetic task, told
    as `what`) and follow it to the end (the client's progress bar on stderr). A job that
    does not succeed, or a refusal of the API, raises RuntimeError; no end within `timeout`
    seconds raises TimeoutError."""
    from dspy_service.client import Client, JobFailed, ServiceError

    what = what or f"{optimizer} on the local arithmetic task"
    try:
        with Client(base_url=api_url, token=token) as client:
            job = client.submit(payload or demo_payload(lm_url, optimizer))
            print(f"demo job {job.id} submitted ({what})", flush=True)
            summary = job.wait(progress=progress, timeout=timeout)
    except (ServiceError, JobFailed) as exc:
        raise RuntimeError(str(exc)) from None
    if summary.get("status") not in ("success", "failed", "cancelled"):
        raise TimeoutError(f"demo job {job.id} did not finish in {timeout:.0f} s (status {summary.get('status')})")
    if summary["status"] != "success":
        raise RuntimeError(f"demo job {summary['status']}: {summary.get('message')}")
    print(
        f"demo job succeeded: test accuracy {summary['baseline_test_metric']:.2f} (baseline) -> "
        f"{summary['optimized_test_metric']:.2f} (optimized)",
        flush=True,
    )
    return summary


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        if args.real_model:
            from deployments.real_model_demo import DESCRIPTION, serving_real_model
            from dspy_service.testing.real_lm import sentiment_job

            with serving_real_model(args.real_model_port) as model:
                job = sentiment_job(model.url)
                run_demo(args.api_url, model.url, token=api_token(args.token), payload=job, what=DESCRIPTION)
        else:
            run_demo(args.api_url, args.lm_url, optimizer=args.optimizer, token=api_token(args.token))
    except (RuntimeError, TimeoutError, OSError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from deployments.prefect_auth import client_environment
    from deployments.stack import PREFECT_DEFAULTS, interpreter_first_on_path

    settings = get_settings()
    error, warning = startup_check(settings.sandbox, settings.sandbox_uid)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    env = {**PREFECT_DEFAULTS, **os.environ, **client_environment(settings)}
    env["PATH"] = interpreter_first_on_path(env.get("PATH", ""))
    command = [sys.executable, "-m", "deployments.worker", "--pool", settings.work_pool]  # deployments/worker.py
    if args.name:
        command += ["--name", args.name]
    if settings.warm_start if args.warm_start is None else args.warm_start:
        return run_warm_worker(command, env, settings, args.name)
    os.execvpe(command[0], command, env)
    return 0  # not reached


def run_warm_worker(command: list[str], env: dict[str, str], settings, name: str | None) -> int:
    """The worker with its zygote (deployments/runtime/zygote.py): zygote first, then the
    worker with DSPY_SERVICE_ZYGOTE_SOCKET; signals go to the worker; the zygote stops
    after it."""
    import subprocess

    from deployments.runtime.protocol import SOCKET_ENV, socket_path
    from deployments.stack import socket_connectable, zygote_command, zygote_environment

    path = socket_path(settings.home_dir, name or f"{os.uname().nodename}-{os.getpid()}")
    zygote = subprocess.Popen(zygote_command(path), env=zygote_environment(env), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not socket_connectable(path):
            if zygote.poll() is not None or time.monotonic() > deadline:
                print(f"error: the warm-start zygote did not start (exit code {zygote.poll()})", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(f"warm start: zygote {zygote.pid} on {path}", file=sys.stderr, flush=True)
        worker = subprocess.Popen(command, env={**env, SOCKET_ENV: path})
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda sig, _frame: worker.send_signal(sig))
        code = worker.wait()
    finally:
        zygote.terminate()
        try:
            zygote.wait(10)
        except subprocess.TimeoutExpired:
            zygote.kill()
    return code


def cmd_register(_: argparse.Namespace) -> int:
    from deployments.prefect_auth import client_environment

    os.environ.update(client_environment(get_settings()))
    from deployments.register import main
    from deployments.users_cli import create_first_admin

    main()
    create_first_admin()  # no-op once an admin exists (or with auth off)
    token_file = get_settings().admin_token_file
    if token_file.exists():
        print(f"first admin's token: {token_file}", flush=True)
    return 0


def cmd_program_server(args: argparse.Namespace) -> int:
    """The program server on a worker host, with the worker's Prefect access."""
    from deployments.prefect_auth import client_environment

    os.environ.update(client_environment(get_settings()))
    from deployments.program_server.__main__ import main

    return main([*(["--host", args.host] if args.host else []), *(["--port", str(args.port)] if args.port else [])])


def cmd_local_lm(args: argparse.Namespace) -> int:
    from dspy_service.testing.local_lm.__main__ import main

    return main(["--port", str(args.port), "--delay-ms", str(args.delay_ms)]) or 0


def add_demo_parser(sub) -> None:
    demo = sub.add_parser("demo", help="submit the offline demo job to a running service")
    demo.add_argument(
        "--url", "--api-url", dest="api_url", default=None,
        help="API base URL (default: DSPY_SERVICE_URL, else http://127.0.0.1:8000)",
    )
    demo.add_argument("--lm-url", default="http://127.0.0.1:8765/v1")
    demo.add_argument("--optimizer", default="bootstrap", help="bootstrap, miprov2, gepa, ...")
    demo.add_argument(
        "--real-model", action="store_true",
        help="serve a real small model here (SmolLM2-135M via llama.cpp; the `real-lm` extra) and run "
        "BootstrapFewShot on a sentiment task with it",
    )
    demo.add_argument(
        "--real-model-port", type=int, default=REAL_MODEL_DEMO_PORT,
        help=f"where --real-model serves the model (default {REAL_MODEL_DEMO_PORT}, which `dspy-service up` "
        "lets jobs reach)",
    )
    demo.add_argument(
        "--token", default=None, help="API token (default: DSPY_SERVICE_TOKEN, else the admin-token file)"
    )
    demo.set_defaults(func=cmd_demo)


def add_program_server_parser(sub) -> None:
    program_server = sub.add_parser(
        "program-server", help="serve registered programs for the API (DSPY_SERVICE_PROGRAM_SERVER_URL; internal token)"
    )
    program_server.add_argument("--host", default=None)
    program_server.add_argument("--port", type=int, default=None)
    program_server.set_defaults(func=cmd_program_server)


def add_warm_start_flags(parser: argparse.ArgumentParser) -> None:
    """--warm-start / --cold-start; neither: DSPY_SERVICE_WARM_START (default on)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--warm-start",
        dest="warm_start",
        action="store_true",
        default=None,
        help="fork jobs from a pre-imported zygote, in warm sandboxes (default; DSPY_SERVICE_WARM_START)",
    )
    group.add_argument(
        "--cold-start",
        dest="warm_start",
        action="store_false",
        help="no zygote: every job starts fresh interpreters (DSPY_SERVICE_WARM_START=false)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dspy-service", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Prefect server, worker, API (and the local LM) on this machine")
    up.add_argument("--api-port", type=int, default=8000)
    up.add_argument("--prefect-port", type=int, default=4200)
    up.add_argument("--host", default="127.0.0.1", help="API bind address (0.0.0.0 to serve other hosts)")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--slots", type=int, default=None, help="jobs running at once (DSPY_SERVICE_JOB_SLOTS)")
    up.add_argument("--local-lm-port", type=int, default=8765)
    up.add_argument("--no-local-lm", action="store_true", help="do not start the local test/demo LM")
    up.add_argument("--demo", action="store_true", help="submit the demo job once the service is up")
    up.add_argument("--demo-optimizer", default="bootstrap")
    up.add_argument("--lm-url", default="http://127.0.0.1:8765/v1")
    add_warm_start_flags(up)
    up.set_defaults(func=cmd_up)

    add_demo_parser(sub)

    worker = sub.add_parser(
        "worker",
        help="start a worker for the pool at PREFECT_API_URL (auth: PREFECT_API_AUTH_STRING, default: the home's "
        "prefect-auth file)",
    )
    worker.add_argument("--name", default=None)
    add_warm_start_flags(worker)
    worker.set_defaults(func=cmd_worker)

    register = sub.add_parser("register", help="create the work pool and register the deployment")
    register.set_defaults(func=cmd_register)

    add_program_server_parser(sub)
    local_lm = sub.add_parser("local-lm", help="run the deterministic local LM (tests and demo only)")
    local_lm.add_argument("--port", type=int, default=8765)
    local_lm.add_argument("--delay-ms", type=int, default=0)
    local_lm.set_defaults(func=cmd_local_lm)
    add_users_parser(sub)
    add_jobs_parser(sub)
    add_submit_parser(sub)
    add_estimate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
