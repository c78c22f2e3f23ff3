"""Run the optimization flow in-process and read back what Prefect recorded (the engine
tests, under `prefect_test_harness`). A failing flow is returned as its state, not raised."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import State

from dspy_service.schemas import JobRequest
from flows.optimize import optimize_program


@dataclass
class FlowOutcome:
    state: State
    flow_run_id: str

    @property
    def result(self) -> dict[str, Any]:
        return self.state.result()

    @property
    def message(self) -> str:
        return self.state.message or ""

    def task_run_names(self) -> list[str]:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[self.flow_run_id])))
        return [run.name for run in sorted(runs, key=lambda r: r.expected_start_time)]


def run_flow(payload: dict[str, Any]) -> FlowOutcome:
    request = JobRequest.model_validate(payload)
    state = optimize_program(job=request.spec(), dataset=request.dataset, return_state=True)
    return FlowOutcome(state=state, flow_run_id=str(state.state_details.flow_run_id))
