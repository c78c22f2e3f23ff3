"""The Pareto front of a sweep's leaderboard: higher quality, lower cost."""

from __future__ import annotations

from dspy_service.sweep_grid import pareto_flags


def test_a_cell_is_on_the_front_unless_another_is_as_good_and_cheaper():
    points = [(0.9, 100.0), (0.8, 50.0), (0.7, 80.0), (0.9, 120.0), (0.95, 300.0)]
    assert pareto_flags(points) == [True, True, False, False, True]


def test_equal_cells_are_both_on_the_front_and_unfinished_ones_never():
    assert pareto_flags([(0.5, 10.0), (0.5, 10.0), (None, None), (0.9, None)]) == [True, True, False, False]


def test_no_finished_cell_no_front():
    assert pareto_flags([(None, None), (None, 3.0)]) == [False, False]
