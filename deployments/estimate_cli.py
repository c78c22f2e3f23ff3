"""`dspy-service estimate job.yaml`: what a job file would cost (POST /run/estimate), as a
table of LM calls, tokens and dollars (low / typical / ceiling) per stage, or `--json`.

Nothing runs and no LM is called; the job file is read as `submit` reads it
(deployments/job_files.py). It fails as `submit` does: one `error: ...` line on stderr and
the exit codes of deployments/exit_codes.py (6 for a job the API refuses, naming the field).
"""

from __future__ import annotations

import argparse
from typing import Any

from deployments.exit_codes import ExitCode
from deployments.job_files import load_job_file
from deployments.jobs_cli import connection_options, print_json, run

ROWS = (("compile", "compile"), ("baseline_evaluation", "baseline eval"), ("optimized_evaluation", "optimized eval"))
COLUMNS = (("lm_calls", "LM CALLS"), ("total_tokens", "TOKENS"), ("cost_usd", "USD"))


def band_text(band: dict[str, Any] | None, dollars: bool = False) -> str:
    """`4 / 8 / 20` (low / typical / ceiling); `-` when unknown (a model without a price)."""
    if not band:
        return "-"
    shown = [f"{band[key]:.4g}" if dollars else f"{band[key]:,.0f}" for key in ("low", "typical", "ceiling")]
    return " / ".join(("$" + value) if dollars else value for value in shown)


def format_estimate(estimate: dict[str, Any]) -> str:
    """The estimate's stages and total as an aligned table, then its assumptions."""
    counts = estimate.get("split_counts") or {}
    head = (f"estimate of {estimate.get('optimizer')} on {estimate.get('module')} "
            f"({counts.get('train', 0)} train / {counts.get('val', 0)} val / {counts.get('test', 0)} test examples)")
    stages = estimate.get("stages") or {}
    figures = [(label, stages.get(key) or {}) for key, label in ROWS] + [("total", estimate.get("total") or {})]
    table = [["STAGE", *(title + " (low / typical / ceiling)" for _, title in COLUMNS)]]
    for label, figure in figures:
        table.append([label, *(band_text(figure.get(key), key == "cost_usd") for key, _ in COLUMNS)])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [head, ""] + ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                          for row in table]
    assumptions = (estimate.get("total") or {}).get("assumptions") or []
    if assumptions:
        lines += ["", "assumptions:"] + [f"- {text}" for text in assumptions]
    return "\n".join(lines)


def cmd_estimate(args: argparse.Namespace, client) -> int:
    estimate = client.estimate(load_job_file(args.file))
    print_json(estimate) if args.json else print(format_estimate(estimate), flush=True)
    return ExitCode.OK


def add_estimate_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "estimate",
        help="what a job file would cost: LM calls, tokens and dollars (low / typical / ceiling); runs nothing",
        parents=[connection_options(on_group=True)],
        description="The job file is read as `submit` reads it (a POST /run body in YAML or JSON).",
    )
    parser.add_argument("file", help="job.yaml or job.json")
    parser.add_argument("--json", action="store_true", help="print the API's JSON for scripts")
    parser.set_defaults(func=lambda args: run(cmd_estimate, args))
