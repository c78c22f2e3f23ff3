"""The cap on a job's printed lines: the head as it comes, the tail at the end, a note between."""

from __future__ import annotations

import logging

from flows.telemetry.print_budget import PrintBudget


def finish(budget: PrintBudget, caplog) -> list[tuple[int, str]]:
    logger = logging.getLogger("test.print_budget")
    with caplog.at_level(logging.INFO, logger=logger.name):
        budget.finish(logger)
    return [(record.levelno, record.getMessage()) for record in caplog.records]


def test_output_within_the_limit_is_logged_as_it_comes(caplog):
    budget = PrintBudget(limit=100)
    assert all(budget.admit(f"line {i:04d}") for i in range(5))  # 5 x 9 bytes, within the first half
    assert finish(budget, caplog) == []


def test_past_the_limit_the_head_and_tail_are_kept_and_the_gap_is_named(caplog):
    budget = PrintBudget(limit=100)  # 50 bytes of head, 50 of tail
    lines = [f"line {i:04d}" for i in range(20)]  # 9 bytes each
    admitted = [line for line in lines if budget.admit(line)]
    assert admitted == lines[:5], "the head is logged at once"
    logged = finish(budget, caplog)
    note_level, note = logged[0]
    assert note_level == logging.WARNING
    assert "dropped 10 printed lines" in note and "90 bytes" in note and "the last 5 follow" in note
    assert "100 bytes" in note and "DSPY_SERVICE_JOB_PRINT_LIMIT_MB" in note
    assert logged[1:] == [(logging.INFO, line) for line in lines[15:]], "the tail comes after the note"


def test_a_line_bigger_than_the_tail_still_keeps_the_last_line(caplog):
    budget = PrintBudget(limit=10)
    assert not budget.admit("x" * 40)
    assert not budget.admit("y" * 40)
    logged = finish(budget, caplog)
    assert "dropped 1 printed lines" in logged[0][1] and logged[1:] == [(logging.INFO, "y" * 40)]
