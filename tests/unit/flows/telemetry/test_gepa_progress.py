"""GEPA's callback events become optimizer facts and one `candidate` event per candidate."""

from __future__ import annotations

import gepa

from flows.telemetry.gepa_progress import GEPAProgress, gepa_callbacks
from flows.telemetry.progress_model import JobProgress


def test_scored_candidates_become_events_with_the_best_score_so_far():
    events: list[dict] = []
    progress = JobProgress(emit=events.append, interval=0)
    progress.stage = "compile-program"
    callbacks = GEPAProgress(progress)
    callbacks.on_optimization_start({"trainset_size": 20, "valset_size": 8})
    callbacks.on_iteration_start({"iteration": 1})
    for candidate, score in enumerate([0.5, 0.75, 0.625, "nan"]):
        callbacks.on_valset_evaluated(
            {
                "iteration": 1,
                "candidate_idx": candidate,
                "average_score": score,
                "is_best_program": score == 0.75,
                "parent_ids": [None, candidate - 1] if candidate else [None],
                "num_examples_evaluated": 8,
                "total_valset_size": 8,
            }
        )
    candidates = [e["metrics"] for e in events if e["event"] == "candidate"]
    assert [(c["candidate"], c["score"], c["best_score"], c["is_best"]) for c in candidates] == [
        (0, 0.5, 0.5, False),
        (1, 0.75, 0.75, True),
        (2, 0.625, 0.75, False),
        (3, None, 0.75, False),
    ]
    assert candidates[1]["parents"] == [0] and candidates[0]["parents"] == []
    assert progress.extras == {
        "optimizer": "GEPA",
        "trainset_size": 20,
        "valset_size": 8,
        "iteration": 1,
        "best_score": 0.75,
        "candidates": 4,
    }


def test_gepa_optimize_gets_the_callback_while_active_only(monkeypatch):
    calls: list[dict] = []

    def optimize(*args, **kwargs):
        calls.append(kwargs)
        return "result"

    monkeypatch.setattr(gepa, "optimize", optimize)
    users_callback = object()
    with gepa_callbacks(JobProgress(emit=lambda event: None)):
        assert gepa.optimize(seed_candidate={}, callbacks=[users_callback]) == "result"
    assert gepa.optimize is optimize
    gepa.optimize(seed_candidate={})
    first, after = calls
    assert first["callbacks"][0] is users_callback and isinstance(first["callbacks"][1], GEPAProgress)
    assert "callbacks" not in after
