"""A sweep's view from its parent run and its child jobs' labels (pure translation)."""

from __future__ import annotations

import json

from api.status import JobStatus
from api.sweep_views import children_by_cell, leaderboard, public_parameters, sweep, sweep_status
from dspy_service import contract

SECRET = "sk-never-shown-123456"
SWEEP_ID = "11111111-1111-1111-1111-111111111111"


def child(index: int, baseline=None, optimized=None, tokens=None, cost=0.0, state="COMPLETED") -> dict:
    labels = {contract.SWEEP_CELL: index, contract.SECONDS_PER_EXAMPLE: 0.25}
    if optimized is not None:
        labels[contract.OPTIMIZED_TEST_METRIC] = optimized
    if baseline is not None:
        labels[contract.BASELINE_TEST_METRIC] = baseline
    if tokens is not None:
        labels[contract.USAGE] = json.dumps({"calls": 7, "total_tokens": tokens, "cost": cost, "cost_known": True})
    return {"id": f"00000000-0000-0000-0000-00000000000{index}", "labels": labels, "state_type": state,
            "state": {"message": "boom"}}


def parent(cells: int, sources: list[int]) -> dict:
    meta = {"username": "ann", "cells": [
        {"index": i, "parameters": {"optimizer_name": f"o{i}"}, "baseline_cell": sources[i]} for i in range(cells)
    ]}
    return {"id": SWEEP_ID, "parameters": {"sweep": meta}, "created": "2026-12-04T22:00:00Z"}


def test_model_configs_are_shown_without_their_secrets():
    shown = public_parameters({
        "model_config": {"name": "openai/m", "temperature": 0.0, "extra": {"api_key": SECRET, "num_retries": 2}},
        "optimizer_name": "bootstrap",
    })
    assert SECRET not in json.dumps(shown)
    assert shown == {"model_config": {"name": "openai/m", "temperature": 0.0, "extra": {"num_retries": 2}},
                     "optimizer_name": "bootstrap"}


def test_the_sweep_runs_until_every_cell_ends_then_says_how_they_ended():
    s, f, c, r = "success", "failed", "cancelled", "running"
    assert sweep_status([s, r]) == "running" and sweep_status(["pending", c]) == "running"
    assert sweep_status([s, f, c]) == "success"
    assert sweep_status([c, c]) == "cancelled"
    assert sweep_status([f, c]) == "failed" and sweep_status([f, f]) == "failed"


def test_the_leaderboard_shares_baselines_and_flags_the_front_by_tokens_when_unpriced():
    runs = [child(0, baseline=0.4, optimized=0.8, tokens=1000), child(1, optimized=0.9, tokens=3000),
            child(2, optimized=0.7, tokens=2000), child(3, state="RUNNING")]
    statuses = [JobStatus.success, JobStatus.success, JobStatus.success, JobStatus.running]
    rows, cost = leaderboard(parent(4, [0, 0, 2, 2])["parameters"]["sweep"], children_by_cell(runs, statuses))
    assert cost == "tokens"
    assert [row["baseline_test_metric"] for row in rows] == [0.4, 0.4, None, None]
    assert [row["pareto"] for row in rows] == [True, True, False, False]
    assert rows[1]["job_id"] == runs[1]["id"] and rows[1]["lm_calls"] == 7 and rows[1]["seconds_per_example"] == 0.25
    assert rows[3]["status"] == "running" and rows[3]["optimized_test_metric"] is None


def test_a_deleted_cell_shows_so_and_a_failed_one_says_why():
    runs = [child(0, state="FAILED")]
    body = sweep(parent(2, [0, 1]), children_by_cell(runs, [JobStatus.failed]))
    assert [row["status"] for row in body["cells"]] == ["failed", "deleted"]
    assert body["cells"][0]["message"] == "boom" and body["cells"][1]["job_id"] is None
    assert body["status"] == "failed" and body["sweep_id"] == "11111111-1111-1111-1111-111111111111"
    assert body["created_at"] == "2026-12-04T22:00:00+00:00"


def test_dollars_weigh_the_front_when_every_finished_cell_is_priced():
    runs = [child(0, optimized=0.8, tokens=1000, cost=0.5), child(1, optimized=0.8, tokens=3000, cost=0.1)]
    rows, cost = leaderboard(parent(2, [0, 1])["parameters"]["sweep"],
                             children_by_cell(runs, [JobStatus.success, JobStatus.success]))
    assert cost == "cost_usd" and [row["pareto"] for row in rows] == [False, True]
