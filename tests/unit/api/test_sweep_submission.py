"""POST /sweeps refuses, before anything is created, what it will not run: each cell is
validated like POST /run and its fields are named as the sweep's body names them. In-memory
gateways, no Prefect (creation is the integration test's: tests/integration/test_sweeps.py)."""

from __future__ import annotations

import pytest

from api.routes.sweeps import get_sweeps
from api.sweeps import Sweeps
from tests.support.payloads import job_payload, model_config
from tests.unit.api.test_preflight import PUBLIC_LM, api  # noqa: F401 - the fixture
from tests.unit.api.test_submission import service


@pytest.fixture
def sweeps_api(api):  # noqa: F811
    jobs = api.app.state.jobs  # its client is the in-memory stand-in holding the owners' default budgets
    api.app.dependency_overrides[get_sweeps] = lambda: Sweeps(service(jobs, None), jobs)
    return api


def sweep(**fields) -> dict:
    body = {"base": job_payload(PUBLIC_LM, rows=40), "grid": {"optimizer_name": ["bootstrap", "labeled_few_shot"]}}
    body.update(fields)
    return body


def refused(client, body: dict, status: int) -> dict:
    answer = client.post("/sweeps", json=body)
    assert answer.status_code == status, answer.text
    assert client.app.state.jobs.created == []
    return answer.json()


def test_an_empty_axis_or_no_axis_is_a_400_naming_it(sweeps_api):
    assert refused(sweeps_api, sweep(grid={"optimizer_name": []}), 400)["field"] == "grid.optimizer_name"
    assert refused(sweeps_api, sweep(grid={}), 400)["field"] == "grid"


def test_more_cells_than_the_setting_allows_is_a_400(sweeps_api, monkeypatch):
    from dspy_service.settings import get_settings

    monkeypatch.setenv("DSPY_SERVICE_MAX_SWEEP_CELLS", "3")
    get_settings.cache_clear()
    sweeps_api.app.state.jobs.settings = get_settings()
    grid = {"optimizer_name": ["bootstrap", "labeled_few_shot"], "optimizer_kwargs": [{}, {}]}
    body = refused(sweeps_api, sweep(grid=grid), 400)
    assert body["field"] == "grid" and "4 cells" in body["detail"] and "at most 3" in body["detail"]


@pytest.mark.parametrize("value", [0, -2])
def test_a_sweep_budget_of_zero_or_less_is_a_422(sweeps_api, value):
    body = refused(sweeps_api, sweep(budget={"max_cost_usd": value}), 422)
    assert body["detail"][0]["field"] == "budget.max_cost_usd"


def test_a_bad_cell_is_named_by_its_axis_and_position(sweeps_api):
    body = refused(sweeps_api, sweep(grid={"optimizer_name": ["bootstrap", "no-such-optimizer"]}), 400)
    assert body["field"] == "grid.optimizer_name[1]" and body["detail"].startswith("cell 1: "), body
    models = [model_config(PUBLIC_LM), {**model_config(PUBLIC_LM), "temperature": 7}]
    body = refused(sweeps_api, sweep(grid={"model_config": models}), 422)
    assert body["detail"][0]["field"] == "grid.model_config[1].temperature", body
    denied = [model_config(PUBLIC_LM), model_config("http://169.254.169.254/v1")]
    body = refused(sweeps_api, sweep(grid={"model_config": denied}), 400)
    assert body["field"] == "grid.model_config[1].base_url", body


def test_a_bad_base_field_is_named_in_base(sweeps_api):
    base = job_payload(PUBLIC_LM, rows=40, module_name="no-such-module")
    body = refused(sweeps_api, sweep(base=base), 400)
    assert body["field"] == "base.module_name", body


def test_a_budget_share_too_small_for_a_cell_is_a_400_naming_the_budget(sweeps_api):
    # 12 test rows of 40: each cell's evaluation needs 24 calls; 4 cells share 60 -> 15 each.
    grid = {"optimizer_name": ["bootstrap", "labeled_few_shot"], "optimizer_kwargs": [{}, {"max_labeled_demos": 2}]}
    body = refused(sweeps_api, sweep(grid=grid, budget={"max_lm_calls": 60}), 400)
    assert body["field"] == "budget.max_lm_calls" and "cell 0" in body["detail"], body


def test_early_stop_is_not_built_and_says_so(sweeps_api):
    assert refused(sweeps_api, sweep(early_stop=True), 400)["field"] == "early_stop"


def test_another_users_name_in_the_base_is_a_403(sweeps_api):
    refused(sweeps_api, sweep(base=job_payload(PUBLIC_LM, rows=40, username="someone-else")), 403)


def test_cells_get_their_owners_default_budget_as_a_job_would(sweeps_api):
    """A sweep without a budget: each cell is a job without one, so the owner's default
    applies to it, checked as POST /run checks it."""
    from tests.unit.api.test_submission import with_default

    with_default(sweeps_api.app.state.jobs, max_lm_calls=2)  # less than any cell's test evaluation needs
    body = refused(sweeps_api, sweep(), 400)
    assert body["detail"].startswith("cell 0: the default budget of tester (PUT /users/me/budget) does not fit")


def test_every_cell_splits_the_data_alike():
    """Cells share one seed (the base's, or one drawn for the sweep): their test splits are
    the same, so their metrics compare and one baseline per model serves them all."""
    from api.sweeps import cell_bodies
    from dspy_service.sweep_grid import SweepRequest, expand

    base = {key: value for key, value in job_payload(PUBLIC_LM, rows=40).items() if key != "seed"}
    request = SweepRequest.model_validate({"base": base, "grid": {"optimizer_name": ["bootstrap", "labeled_few_shot"]}})
    drawn = cell_bodies(request, expand(request.grid, 50))
    assert len({body["seed"] for body in drawn}) == 1 and isinstance(drawn[0]["seed"], int)
    request = SweepRequest.model_validate({"base": {**base, "seed": 11}, "grid": request.grid.model_dump()})
    assert [body["seed"] for body in cell_bodies(request, expand(request.grid, 50))] == [11, 11]


def test_a_page_past_every_sweep_is_empty_without_asking_prefect(sweeps_api):
    """Prefect's SQLite database fails on offsets over 2**63 (found by the fuzz test)."""
    page = sweeps_api.get("/sweeps", params={"offset": 10**19})
    assert page.status_code == 200 and page.json() == {"items": [], "limit": 20, "offset": 10**19}
