"""`dspy-service jobs ...` and `dspy-service submit`: jobs over HTTP, through dspy_service.client.

    dspy-service submit job.yaml [--wait]     # prints the job id; --wait follows it like `jobs watch`
    dspy-service jobs list [--status S] [--user U] [--limit N]
    dspy-service jobs show ID
    dspy-service jobs logs ID [-f]            # -f: follow until the job ends
    dspy-service jobs watch ID                # progress bar until the job ends; exit 0 only on success
    dspy-service jobs cancel ID
    dspy-service jobs delete ID
    dspy-service jobs artifact ID -o DIR      # program.json, signature.py, metric.py, README.md

Every command takes `--url` and `--token` (also before the subcommand: `jobs --url U list`;
defaults: DSPY_SERVICE_URL / DSPY_SERVICE_TOKEN, else the local `dspy-service up` API and
its admin-token file) and `--json` for scripts. The job file format: deployments/job_files.py;
exit codes: deployments/exit_codes.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

from deployments.exit_codes import ExitCode, error_line, exit_code_for, exit_code_for_status
from deployments.job_files import load_job_file, write_artifact_dir

STATUSES = ("pending", "running", "success", "failed", "cancelled")
TERMINAL = ("success", "failed", "cancelled")


# ---- formatting (pure) -------------------------------------------------------------------


def short_time(value: str | None) -> str:
    """`2026-12-03T10:11:12.345+00:00` -> `2026-12-03 10:11:12`."""
    return value[:19].replace("T", " ") if value else "-"


def score_text(job: dict[str, Any]) -> str:
    baseline, optimized = job.get("baseline_test_metric"), job.get("optimized_test_metric")
    if baseline is None and optimized is None:
        return ""
    return f"{_number(baseline)} -> {_number(optimized)}"


def _number(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "-"


def progress_text(job: dict[str, Any]) -> str:
    """`compile-program 45%` from a job's latest metrics (empty when it reported none)."""
    metrics = job.get("latest_metrics") or {}
    parts = [str(metrics.get("stage") or metrics.get("tqdm_desc") or "")]
    if isinstance(metrics.get("tqdm_percent"), int | float):
        parts.append(f"{metrics['tqdm_percent']:.0f}%")
    return " ".join(p for p in parts if p)


def result_text(job: dict[str, Any]) -> str:
    """What the list shows of a job's outcome: scores, progress, or why it ended."""
    status = job.get("status")
    if status == "success":
        return score_text(job)
    if status in ("pending", "running"):
        return progress_text(job)
    return " ".join(str(job.get("message") or "").split())[:60]


LIST_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("JOB ID", lambda j: str(j.get("job_id") or "")),
    ("STATUS", lambda j: str(j.get("status") or "")),
    ("USER", lambda j: str(j.get("username") or "-")),
    ("OPTIMIZER", lambda j: str(j.get("optimizer_name") or "-")),
    ("MODULE", lambda j: str(j.get("module_name") or "-")),
    ("CREATED", lambda j: short_time(j.get("created_at"))),
    ("ELAPSED", lambda j: str(j.get("elapsed") or "-")),
    ("RESULT", result_text),
)


def format_job_table(items: Iterable[dict[str, Any]]) -> str:
    """Job summaries as an aligned table (the last column is not padded)."""
    rows = [[name for name, _ in LIST_COLUMNS]] + [[cell(job) for _, cell in LIST_COLUMNS] for job in items]
    widths = [max(len(row[i]) for row in rows) for i in range(len(LIST_COLUMNS) - 1)]
    lines = []
    for row in rows:
        padded = [value.ljust(width) for value, width in zip(row, widths, strict=False)] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def usage_text(usage: dict[str, Any] | None) -> str | None:
    total = (usage or {}).get("total") or usage
    if not total or not isinstance(total, dict) or "calls" not in total:
        return None
    text = f"{total.get('calls', 0)} LM calls, {total.get('total_tokens', 0)} tokens"
    if total.get("cache_hits"):
        text += f", {total['cache_hits']} cache hits"
    if total.get("errors"):
        text += f", {total['errors']} failed"
    if total.get("retries"):
        text += f", {total['retries']} retries"
    if isinstance(total.get("cost"), int | float):
        text += f", ${total['cost']:.4f}" + ("" if total.get("cost_known", True) else " (some calls unpriced)")
    return text


def format_summary(job: dict[str, Any]) -> str:
    """A job summary (GET /jobs/{id}/summary) as `key: value` lines, unset fields left out."""
    fields = [
        ("job", job.get("job_id")),
        ("status", job.get("status")),
        ("message", job.get("message")),
        ("user", job.get("username")),
        ("module", job.get("module_name")),
        ("optimizer", job.get("optimizer_name")),
        ("model", job.get("model_name")),
        ("dataset rows", job.get("dataset_rows")),
        ("created", job.get("created_at")),
        ("started", job.get("started_at")),
        ("completed", job.get("completed_at")),
        ("elapsed", job.get("elapsed")),
        ("remaining", job.get("estimated_remaining")),
        ("progress", progress_text(job) if job.get("status") in ("pending", "running") else None),
        ("test score", score_text(job) + " (baseline -> optimized)" if score_text(job) else None),
        ("usage", usage_text(job.get("usage"))),
        ("schedule", job.get("schedule_id")),
    ]
    shown = [(name, value) for name, value in fields if value not in (None, "")]
    width = max(len(name) for name, _ in shown)
    return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in shown)


def format_log_entry(entry: dict[str, Any]) -> str:
    """`2026-12-03 10:11:12 INFO    dspy.x: message` (multi-line messages keep their lines)."""
    level = str(entry.get("level") or "")
    return f"{short_time(entry.get('timestamp'))} {level:<7} {entry.get('logger') or '-'}: {entry.get('message', '')}"


def final_line(job: dict[str, Any]) -> str:
    """The one line `watch` and `submit --wait` end with."""
    line = f"job {job.get('job_id')} {job.get('status')}"
    if job.get("elapsed"):
        line += f" after {job['elapsed']}"
    if job.get("status") == "success" and score_text(job):
        line += f": test score {score_text(job)} (baseline -> optimized)"
    elif job.get("message"):
        line += f": {' '.join(str(job['message']).split())}"
    return line


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str), flush=True)


# ---- commands ------------------------------------------------------------------------------


def client_of(args: argparse.Namespace):
    from dspy_service.client import Client

    return Client(base_url=getattr(args, "url", None), token=getattr(args, "token", None))


def cmd_list(args: argparse.Namespace, client) -> int:
    params = {"status": args.status, "username": args.user, "limit": args.limit}
    page = client.get("/jobs", **{k: v for k, v in params.items() if v is not None})
    if args.json:
        print_json(page)
    elif not page.get("items"):
        print("no jobs")
    else:
        print(format_job_table(page["items"]))
        if page.get("total", 0) > len(page["items"]):
            print(f"({len(page['items'])} of {page['total']} jobs; --limit shows more)")
    return ExitCode.OK


def cmd_show(args: argparse.Namespace, client) -> int:
    summary = client.job(args.job_id).summary()
    print_json(summary) if args.json else print(format_summary(summary))
    return ExitCode.OK


def cmd_logs(args: argparse.Namespace, client) -> int:
    for entry in client.job(args.job_id).logs(follow=args.follow):
        print(json.dumps(entry) if args.json else format_log_entry(entry), flush=True)
    return ExitCode.OK


def follow_to_end(job, as_json: bool) -> int:
    """Show the job's progress until it ends (the bar on stderr), then its final line."""
    summary = job.wait(progress=not as_json)
    print_json(summary) if as_json else print(final_line(summary), flush=True)
    return exit_code_for_status(summary.get("status"))


def cmd_watch(args: argparse.Namespace, client) -> int:
    return follow_to_end(client.job(args.job_id), args.json)


def cmd_cancel(args: argparse.Namespace, client) -> int:
    client.job(args.job_id).cancel()
    print_json({"job_id": args.job_id, "status": "cancelled"}) if args.json else print(f"job {args.job_id} cancelled")
    return ExitCode.OK


def cmd_delete(args: argparse.Namespace, client) -> int:
    client.job(args.job_id).delete()
    print_json({"job_id": args.job_id, "deleted": True}) if args.json else print(f"job {args.job_id} deleted")
    return ExitCode.OK


def cmd_artifact(args: argparse.Namespace, client) -> int:
    artifact = client.job(args.job_id).artifact()
    directory = args.output or f"dspy-program-{args.job_id[:8]}"
    written = write_artifact_dir(args.job_id, artifact, directory)
    if args.json:
        print_json({"job_id": args.job_id, "directory": str(directory), "files": [str(p) for p in written]})
    else:
        print(f"wrote the program of job {args.job_id} to {directory}/ ({', '.join(p.name for p in written)})")
        print(f"load it: see {directory}/README.md")
    return ExitCode.OK


def cmd_submit(args: argparse.Namespace, client) -> int:
    body = load_job_file(args.file)
    job = client.submit(body)
    if args.wait:
        print(f"submitted job {job.id}", file=sys.stderr, flush=True)
        return follow_to_end(job, args.json)
    print_json({"job_id": job.id}) if args.json else print(job.id, flush=True)
    return ExitCode.OK


def run(command: Callable[[argparse.Namespace, Any], int], args: argparse.Namespace) -> int:
    """Run a command with a client; any error is one line on stderr and its exit code."""
    try:
        with client_of(args) as client:
            return int(command(args, client))
    except (Exception, KeyboardInterrupt) as exc:
        print(error_line(exc), file=sys.stderr, flush=True)
        return int(exit_code_for(exc))


# ---- parsers -------------------------------------------------------------------------------


def connection_options(on_group: bool) -> argparse.ArgumentParser:
    """--url and --token; on a subcommand they only override what the group was given."""
    default = None if on_group else argparse.SUPPRESS
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--url", default=default, help="API base URL (default: DSPY_SERVICE_URL, else http://127.0.0.1:8000)"
    )
    parent.add_argument(
        "--token", default=default, help="API token (default: DSPY_SERVICE_TOKEN, else the local admin-token file)"
    )
    return parent


def _leaf(commands: Any, name: str, command: Callable, help: str, *, parents=()) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, parents=[*parents, connection_options(on_group=False)])
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.set_defaults(func=lambda args: run(command, args))
    return parser


def add_jobs_parser(sub: Any) -> None:
    group = sub.add_parser(
        "jobs", help="list, show, follow, cancel and delete jobs over HTTP", parents=[connection_options(True)]
    )
    commands = group.add_subparsers(dest="jobs_command", required=True)
    listing = _leaf(commands, "list", cmd_list, "your jobs, newest first (an admin's: everyone's)")
    listing.add_argument("--status", choices=STATUSES, default=None)
    listing.add_argument("--user", default=None, help="only this user's jobs (admins)")
    listing.add_argument("--limit", type=int, default=None, help="at most this many (API default 50, max 500)")
    for name, command, text in (
        ("show", cmd_show, "a job's summary"),
        ("logs", cmd_logs, "a job's log lines"),
        ("watch", cmd_watch, "the job's progress bar until it ends; exit 0 on success, 5 otherwise"),
        ("cancel", cmd_cancel, "cancel a pending or running job"),
        ("delete", cmd_delete, "delete a finished job with its logs and results"),
        ("artifact", cmd_artifact, "write the optimized program and how to load it to a directory"),
    ):
        leaf = _leaf(commands, name, command, text)
        leaf.add_argument("job_id", metavar="ID")
        if name == "logs":
            leaf.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the job ends")
        if name == "artifact":
            leaf.add_argument("-o", "--output", metavar="DIR", default=None, help="default: ./dspy-program-<id8>")


def add_submit_parser(sub: Any) -> None:
    submit = sub.add_parser(
        "submit",
        help="submit a job file (a POST /run body in YAML or JSON); prints the job id",
        parents=[connection_options(on_group=True)],
        description="Keys signature_code_file, metric_code_file and dataset_file (CSV, JSONL, JSON, Parquet) "
        "name files, relative to the job file.",
    )
    submit.add_argument("file", help="job.yaml or job.json")
    submit.add_argument("--wait", action="store_true", help="follow the job like `jobs watch`")
    submit.add_argument("--json", action="store_true", help="print JSON for scripts")
    submit.set_defaults(func=lambda args: run(cmd_submit, args))
