"""A sweep's grid (POST /sweeps): the request model, the cells it expands to, each cell's
share of the sweep's budget, which cells evaluate the baseline, and the Pareto front of
the leaderboard.

Pure: nothing here does I/O or runs user code. How it fails: `SweepRequest` is pydantic
(422 naming the field: shapes, a budget limit <= 0); `expand` and `budget_share` raise
JobError naming the field (400): no axis, an empty axis, more cells than
DSPY_SERVICE_MAX_SWEEP_CELLS, a budget too small to share, `early_stop` (not built).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dspy_service.budget import Budget
from dspy_service.errors import JobError

# The axes in expansion order (the last varies fastest), by their POST /run field names.
AXES = ("model_config", "optimizer_name", "optimizer_kwargs", "reflection_model_config")
# Axes holding model configs: their values are shown redacted (ModelConfig.public_settings).
MODEL_AXES = ("model_config", "reflection_model_config")


class SweepGrid(BaseModel):
    """The values each axis takes; a cell is one combination. Axes left out keep `base`'s value."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    main_model: list[dict[str, Any]] | None = Field(default=None, alias="model_config")
    optimizer_name: list[str] | None = None
    optimizer_kwargs: list[dict[str, Any]] | None = None
    reflection_model: list[dict[str, Any]] | None = Field(default=None, alias="reflection_model_config")

    def axes(self) -> dict[str, list[Any]]:
        """The axes given, by wire name, in AXES order."""
        values = self.model_dump(by_alias=True, exclude_none=True)
        return {axis: values[axis] for axis in AXES if axis in values}


class SweepRequest(BaseModel):
    """The POST /sweeps body."""

    model_config = ConfigDict(extra="forbid")

    base: dict[str, Any] = Field(description="A POST /run body every cell starts from.")
    grid: SweepGrid
    budget: Budget | None = Field(
        default=None, description="The whole sweep's budget, split evenly across its cells (each cell's `budget`)."
    )
    early_stop: bool = Field(default=False, description="Not built: true is a 400.")


@dataclass(frozen=True)
class Cell:
    """One grid cell: its index, the axis values it sets (wire names) and each value's
    position on its axis (for error fields: `grid.<axis>[position]`)."""

    index: int
    parameters: dict[str, Any]
    positions: dict[str, int]


def expand(grid: SweepGrid, max_cells: int) -> list[Cell]:
    """Every combination of the given axes, in AXES order; JobError naming the field for
    no axis, an empty axis, or more than `max_cells` cells."""
    axes = grid.axes()
    if not axes:
        raise JobError(f"give at least one axis of the grid: {', '.join(AXES)}", field="grid")
    for axis, values in axes.items():
        if not values:
            message = f"grid.{axis} is empty: give at least one value, or leave the axis out"
            raise JobError(message, field=f"grid.{axis}")
    count = math.prod(len(values) for values in axes.values())
    if count > max_cells:
        sizes = " × ".join(f"{len(v)} {axis}" for axis, v in axes.items())
        raise JobError(
            f"the grid has {count} cells ({sizes}); at most {max_cells} (DSPY_SERVICE_MAX_SWEEP_CELLS)", field="grid"
        )
    combos = itertools.product(*(range(len(values)) for values in axes.values()))
    return [
        Cell(i, {axis: axes[axis][p] for axis, p in zip(axes, combo, strict=True)}, dict(zip(axes, combo, strict=True)))
        for i, combo in enumerate(combos)
    ]


def check_request(request: SweepRequest) -> None:
    """JobError for what the body may say but the service does not do."""
    if request.early_stop:
        raise JobError("early_stop is not supported yet: leave it out or false", field="early_stop")
    if request.budget is not None and request.base.get("budget") is not None:
        raise JobError("give the budget once: the sweep's `budget` (split across cells) or base.budget (per cell)",
                       field="budget")


def budget_share(budget: Budget, cells: int) -> Budget:
    """Each cell's even share of the sweep's budget (calls and tokens rounded down, dollars
    to the micro-dollar); JobError naming the limit when a share would be nothing."""
    shares: dict[str, Any] = {}
    for name, limit in budget.limits().items():
        share = int(limit // cells) if name != "max_cost_usd" else math.floor(limit / cells * 1e6) / 1e6
        if share <= 0:
            raise JobError(
                f"budget.{name} {limit} shared by {cells} cells leaves each nothing; raise it or make the grid smaller",
                field=f"budget.{name}",
            )
        shares[name] = share
    return Budget(**shares)


def model_key(config: Any) -> str:
    """Cells of one main model config (same JSON) share their baseline."""
    return json.dumps(config, sort_keys=True, default=str)


def baseline_sources(bodies: Sequence[dict[str, Any]]) -> list[int]:
    """Per cell body: the index of the cell whose baseline score it shows, the first cell of
    its main model config (the baseline program and the test split are the same for all of
    them: the base fixes module, signature, data and split). A cell is its own source when it
    evaluates the baseline; the others skip that evaluation (`evaluate_baseline: false`)."""
    first: dict[str, int] = {}
    return [first.setdefault(model_key(body.get("model_config")), index) for index, body in enumerate(bodies)]


def pareto_flags(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """Per (quality, cost) point: on the Pareto front of higher quality and lower cost?
    A point with either figure unknown (a cell not finished) is never on it; a point is
    off the front when another is at least as good on both and better on one."""
    known = [(q, c) for q, c in points if q is not None and c is not None]

    def dominated(q: float, c: float) -> bool:
        return any(oq >= q and oc <= c and (oq > q or oc < c) for oq, oc in known)

    return [q is not None and c is not None and not dominated(q, c) for q, c in points]
