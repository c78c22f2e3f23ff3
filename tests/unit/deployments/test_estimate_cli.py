"""How `dspy-service estimate` shows an estimate (the command itself runs against a stack in
tests/integration/test_cli.py)."""

from __future__ import annotations

from deployments.estimate_cli import band_text, format_estimate


def band(low, typical, ceiling) -> dict:
    return {"low": low, "typical": typical, "ceiling": ceiling}


def figure(calls, tokens, cost=None, assumptions=()) -> dict:
    return {"lm_calls": calls, "total_tokens": tokens, "cost_usd": cost, "assumptions": list(assumptions)}


def test_bands_read_low_typical_ceiling_and_unknown_dollars_are_a_dash():
    assert band_text(band(4, 8, 20)) == "4 / 8 / 20"
    assert band_text(band(1200, 3400.4, 12000)) == "1,200 / 3,400 / 12,000"
    assert band_text(band(0.0012, 0.25, 1.5), dollars=True) == "$0.0012 / $0.25 / $1.5"
    assert band_text(None, dollars=True) == "-"


def test_the_table_has_a_row_per_stage_and_the_total_then_the_assumptions():
    estimate = {
        "optimizer": "BootstrapFewShot", "module": "predict", "split_counts": {"train": 10, "val": 4, "test": 6},
        "stages": {
            "compile": figure(band(4, 8, 10), band(700, 1400, 1800)),
            "baseline_evaluation": figure(band(6, 6, 6), band(1000, 1000, 1000), band(0.001, 0.001, 0.001)),
            "optimized_evaluation": figure(band(6, 6, 6), band(1500, 1600, 1700)),
        },
        "total": figure(band(16, 20, 22), band(3200, 4000, 4500), None, ["a cold LM cache"]),
    }
    lines = format_estimate(estimate).splitlines()
    assert lines[0] == "estimate of BootstrapFewShot on predict (10 train / 4 val / 6 test examples)"
    assert lines[2].split("  ")[0] == "STAGE" and "LM CALLS (low / typical / ceiling)" in lines[2]
    rows = {line.split("  ")[0].strip(): line for line in lines[3:7]}
    assert list(rows) == ["compile", "baseline eval", "optimized eval", "total"]
    assert "16 / 20 / 22" in rows["total"] and "3,200 / 4,000 / 4,500" in rows["total"]
    assert rows["baseline eval"].endswith("$0.001 / $0.001 / $0.001") and rows["total"].endswith("-")
    assert lines[-2:] == ["assumptions:", "- a cold LM cache"]
    # columns line up: every row's token column starts where the header's does
    start = lines[2].index("TOKENS")
    assert all(line[start - 2 : start] == "  " and line[start] != " " for line in lines[3:7])
