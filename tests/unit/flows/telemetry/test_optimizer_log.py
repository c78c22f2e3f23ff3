"""Optimizer log lines, as DSPy 3.4 writes them, become phase bars and trial-score events."""

from __future__ import annotations

import logging

from flows.telemetry.optimizer_log import OptimizerLogProgress, reading_optimizer_logs
from flows.telemetry.progress_model import JobProgress


def read_lines(lines: list[str], logger: str = "dspy.teleprompt.mipro_optimizer_v2") -> list[dict]:
    events: list[dict] = []
    progress = JobProgress(emit=events.append, interval=0)
    progress.stage = "compile-program"
    reader = OptimizerLogProgress(progress)
    for line in lines:
        reader.emit(logging.LogRecord(logger, logging.INFO, "", 0, line, None, None))
    return events


def trials(events: list[dict]) -> list[dict]:
    return [e["metrics"] for e in events if e["event"] == "trial"]


def scores(events: list[dict]) -> list[tuple]:
    """(trial, score, scored on the full validation set, best full score so far) per trial event."""
    return [(t["trial"], t["score"], t["full_eval"], t["best_score"]) for t in trials(events)]


def bar_events(events: list[dict], desc: str) -> list[dict]:
    return [e["metrics"] for e in events if e["event"] == "progress" and e["metrics"]["tqdm_desc"] == desc]


def test_mipro_log_lines_become_a_trial_bar_and_score_events():
    lines = """\
Bootstrapping set 1/3
Bootstrapping set 2/3
Bootstrapping set 3/3
==> STEP 2: PROPOSE INSTRUCTION CANDIDATES <==
== Trial 1 / 4 - Full Evaluation of Default Program ==
Default program score: 25.0
== Trial 2 / 4 - Minibatch ==
Score: 50.0 on minibatch of size 35 with parameters ['Predictor 0: Instruction 1'].
===== Trial 3 / 4 - Full Evaluation =====
Doing full eval on next top averaging program (Avg Score: 50.0) from minibatch trials...
\x1b[92mNew best full eval score!\x1b[0m Score: 62.5
Full eval scores so far: [25.0, 62.5]
Best full score so far: 62.5
Returning best identified program with score 62.5!""".splitlines()
    events = read_lines(lines)
    assert scores(events) == [(1, 25.0, True, 25.0), (2, 50.0, False, 25.0), (3, 62.5, True, 62.5)]
    assert [t["tqdm_n"] for t in trials(events)] == [1, 2, 3] and trials(events)[0]["tqdm_total"] == 4
    bars = [e["metrics"] for e in events if e["event"] == "progress"]
    sets = [b for b in bars if b["tqdm_desc"] == "MIPROv2 bootstrapping demo sets"]
    assert sets[-1]["tqdm_n"] == 3 and sets[-1]["final"]
    assert bars[-1]["tqdm_desc"] == "MIPROv2 trials" and bars[-1]["final"]


def test_mipro_without_minibatches_scores_each_trial_in_full():
    lines = """\
==> STEP 3: FINDING OPTIMAL PROMPT PARAMETERS <==
== Trial 1 / 3 - Full Evaluation of Default Program ==
Default program score: 40.0
===== Trial 2 / 3 =====
Score: 30.0 with parameters ['Predictor 0: Instruction 0', 'Predictor 0: Few-Shot Set 1'].
Best score so far: 40.0
===== Trial 3 / 3 =====
Score: 70.0 with parameters ['Predictor 0: Instruction 2', 'Predictor 0: Few-Shot Set 0'].
\x1b[92mBest full score so far!\x1b[0m Score: 70.0
Best score so far: 70.0""".splitlines()
    events = read_lines(lines)
    assert scores(events) == [(1, 40.0, True, 40.0), (2, 30.0, True, 40.0), (3, 70.0, True, 70.0)]
    assert all(t["optimizer"] == "MIPROv2" and t["trials_total"] == 3 for t in trials(events))
    assert events[-1]["event"] == "trial", "a best-score line alone emits nothing"


def test_copro_depth_lines_become_a_depth_bar():
    events = read_lines(
        ["Iteration Depth: 1/3.", "Iteration Depth: 2/3.", "Iteration Depth: 3/3."],
        logger="dspy.teleprompt.copro_optimizer",
    )
    depth = bar_events(events, "COPRO depth")
    assert [(m["tqdm_n"], m["tqdm_total"]) for m in depth] == [(0, 3), (1, 3), (2, 3)]
    assert all(m["optimizer"] == "COPRO" and m["stage"] == "compile-program" for m in depth)


def test_simba_batch_lines_become_a_steps_bar():
    events = read_lines(["Starting batch 1 of 4.", "Starting batch 2 of 4."], logger="dspy.teleprompt.simba")
    steps = bar_events(events, "SIMBA steps")
    assert [(m["tqdm_n"], m["tqdm_total"], m["tqdm_percent"]) for m in steps] == [(0, 4, 0.0), (1, 4, 25.0)]
    assert all(m["optimizer"] == "SIMBA" for m in steps)


def test_other_lines_are_ignored():
    assert read_lines(["Average Metric: 3 / 4 (75.0%)", "Score: 0.5", "Trial 2 / 4", ""]) == []


def test_prints_and_optimizer_loggers_are_read_while_active_only():
    events: list[dict] = []
    progress = JobProgress(emit=events.append, interval=0)
    progress.stage = "compile-program"
    optimizer_logger = logging.getLogger("dspy.teleprompt")
    level = optimizer_logger.level
    optimizer_logger.setLevel(logging.WARNING)
    try:
        with reading_optimizer_logs(progress):
            logging.getLogger("dspy.teleprompt.copro_optimizer").info("Iteration Depth: 1/2.")
            logging.getLogger("dspy_service.print").warning("Bootstrapping set 1/5")
        logging.getLogger("dspy.teleprompt.copro_optimizer").warning("Iteration Depth: 2/2.")
        assert optimizer_logger.level == logging.WARNING, "the logger's level is restored"
    finally:
        optimizer_logger.setLevel(level)
    assert [e["metrics"]["tqdm_desc"] for e in events] == ["COPRO depth", "MIPROv2 bootstrapping demo sets"]
