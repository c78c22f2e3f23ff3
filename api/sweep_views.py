"""Sweeps -> the API's sweep objects (pure translation, no I/O).

A sweep is its parent flow run (the `sweep` parameter: owner, cells with their redacted
parameters, budgets) and its child jobs (ordinary job runs, labelled with the cell index).
Its status is derived from the children's; the leaderboard reads the children's labels
only (metrics, usage, seconds per example), never a result. A cell whose job is gone
(deleted) shows `status: "deleted"`; a parameter that no longer validates shows as given
minus anything but the model's name.

How it fails: nothing raises for malformed labels or parameters; they show as nulls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from api.prefect_reads import Run
from api.status import JobStatus
from api.views import contract_timestamp, status_message
from dspy_service import contract
from dspy_service.schemas import ModelConfig
from dspy_service.sweep_grid import MODEL_AXES, pareto_flags

DELETED = "deleted"


def public_model(config: Any) -> dict[str, Any]:
    """A model config as every view shows one: its name and allow-listed settings."""
    try:
        model = ModelConfig.model_validate(config)
    except ValueError:
        name = config.get("name") if isinstance(config, dict) else None
        return {"name": name if isinstance(name, str) else None}
    return model.public_view()


def public_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A cell's axis values with model configs redacted (no key, header or secret-looking extra)."""
    return {axis: public_model(value) if axis in MODEL_AXES else value for axis, value in parameters.items()}


def sweep_status(statuses: Sequence[str]) -> str:
    """`running` while any cell is active; then `success` when a cell succeeded, `cancelled`
    when every cell was cancelled, else `failed`. A deleted cell counts as ended."""
    ended = {JobStatus.success.value, JobStatus.failed.value, JobStatus.cancelled.value, DELETED}
    if any(status not in ended for status in statuses):
        return JobStatus.running.value
    if JobStatus.success.value in statuses:
        return JobStatus.success.value
    if statuses and all(status == JobStatus.cancelled.value for status in statuses):
        return JobStatus.cancelled.value
    return JobStatus.failed.value


def cell_figures(run: Run | None) -> dict[str, Any]:
    """What a cell's job says of itself on its labels."""
    labels = (run or {}).get("labels") or {}
    usage = contract.decode_json_label(labels, contract.USAGE, None) or {}
    return {
        "baseline_test_metric": contract.number_label(labels, contract.BASELINE_TEST_METRIC),
        "optimized_test_metric": contract.number_label(labels, contract.OPTIMIZED_TEST_METRIC),
        "termination_reason": labels.get(contract.TERMINATION_REASON),
        "lm_calls": usage.get("calls"),
        "tokens": usage.get("total_tokens"),
        "cost_usd": usage.get("cost"),
        "cost_known": usage.get("cost_known"),
        "seconds_per_example": contract.number_label(labels, contract.SECONDS_PER_EXAMPLE),
    }


def pareto_cost(rows: Sequence[dict[str, Any]]) -> str:
    """The cost the front weighs: dollars when every finished cell has a known, non-zero
    price, else tokens (a local or unpriced model costs $0 for every cell)."""
    done = [row for row in rows if row["status"] == JobStatus.success.value]
    priced = done and all(row["cost_known"] and (row["cost_usd"] or 0) > 0 for row in done)
    return "cost_usd" if priced else "tokens"


def leaderboard(meta: Mapping[str, Any], children: Mapping[int, tuple[Run, JobStatus]]) -> tuple[list[dict], str]:
    """(the rows, one per cell in grid order, and the cost the `pareto` flags weigh)."""
    rows = []
    for cell in meta.get("cells") or []:
        index = int(cell.get("index", len(rows)))
        run, status = children.get(index, (None, None))
        rows.append({
            "cell": index,
            "job_id": str(run["id"]) if run else None,
            "parameters": cell.get("parameters") or {},
            "status": status.value if status else DELETED,
            "message": status_message(run, status) if run and status else None,
            "baseline_from_cell": cell.get("baseline_cell", index),
            **cell_figures(run),
        })
    for row in rows:  # cells that share a baseline show the score of the cell that measured it
        source = rows[row["baseline_from_cell"]] if 0 <= row["baseline_from_cell"] < len(rows) else row
        if row["baseline_test_metric"] is None:
            row["baseline_test_metric"] = source["baseline_test_metric"]
    cost = pareto_cost(rows)
    points = [
        (row["optimized_test_metric"], row[cost]) if row["status"] == JobStatus.success.value else (None, None)
        for row in rows
    ]
    for row, on_front in zip(rows, pareto_flags(points), strict=True):
        row["pareto"] = on_front
    return rows, cost


def sweep(parent: Run, children: Mapping[int, tuple[Run, JobStatus]]) -> dict[str, Any]:
    """POST /sweeps, GET /sweeps/{id} and POST /sweeps/{id}/cancel: the sweep and its leaderboard."""
    meta = sweep_meta(parent)
    rows, cost = leaderboard(meta, children)
    return {
        "sweep_id": str(parent["id"]),
        "status": sweep_status([row["status"] for row in rows]),
        "username": meta.get("username"),
        "name": meta.get("name"),
        "created_at": contract_timestamp(parent.get("created")),
        "budget": meta.get("budget"),
        "cell_budget": meta.get("cell_budget"),
        "pareto_cost": cost,
        "cells": rows,
    }


def sweep_meta(parent: Run) -> dict[str, Any]:
    meta = (parent.get("parameters") or {}).get("sweep")
    return meta if isinstance(meta, dict) else {}


def children_by_cell(runs: Sequence[Run], statuses: Sequence[JobStatus]) -> dict[int, tuple[Run, JobStatus]]:
    """The child jobs by their cell index (label); a run without one is not a cell."""
    found: dict[int, tuple[Run, JobStatus]] = {}
    for run, status in zip(runs, statuses, strict=True):
        index = (run.get("labels") or {}).get(contract.SWEEP_CELL)
        if isinstance(index, str) and index.isdigit():
            index = int(index)
        if isinstance(index, int) and not isinstance(index, bool):
            found[index] = (run, status)
    return found
