"""POST /run/estimate on a real stack: it answers without any LM call, flow run or stored
row, from the caller's point of view validated exactly like POST /run."""

from __future__ import annotations

import pytest

from tests.support.payloads import light_optimizer_payload, model_config


def flow_run_count(stack) -> int:
    response = stack.prefect.post("/flow_runs/count", json={})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.sqlite_only
def test_an_estimate_calls_no_lm_creates_no_run_and_refuses_bad_input_naming_the_field(stack, local_lm, tmp_path):
    owner = stack.add_user("estimate-owner")
    other = stack.add_user("estimate-other")
    assert owner.post("/credentials", json={"name": "owners-key", "api_key": "sk-owner-only"}).status_code == 201
    marker = tmp_path / "signature-ran"
    payload = light_optimizer_payload(local_lm.url, "gepa")
    payload.pop("username")
    payload["signature_code"] = f"open({str(marker)!r}, 'w').write('ran')\n" + payload["signature_code"]
    calls_before, runs_before = local_lm.stats()["calls"], flow_run_count(stack)

    answer = owner.post("/run/estimate", json=payload)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["username"] == "estimate-owner" and body["optimizer"] == "GEPA"
    assert body["split_counts"] == {"train": 15, "val": 6, "test": 9}
    assert body["stages"]["baseline_evaluation"]["lm_calls"] == {"low": 9, "typical": 9, "ceiling": 9}
    roles = {part["role"] for part in body["stages"]["compile"]["parts"]}
    assert roles == {"main", "reflection"}
    total = body["total"]["lm_calls"]
    assert 0 < total["low"] <= total["typical"] <= total["ceiling"]
    assert all(stage["assumptions"] for stage in body["stages"].values())

    priced = {**payload, "model_config": {**payload["model_config"], "extra": {
        "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}}}
    dollars = owner.post("/run/estimate", json=priced).json()
    assert dollars["prices"]["main"]["source"] == "model_config.extra"
    assert dollars["stages"]["baseline_evaluation"]["cost_usd"]["typical"] > 0
    assert dollars["total"]["cost_usd"] is None  # the reflection model has no price

    bad = [
        ({**payload, "module_name": "no-such-module"}, 400, "module_name"),
        ({**payload, "split_fractions": {"train": 0.5, "val": 0.5, "test": 0.5}}, 422, "split_fractions"),
        ({k: v for k, v in payload.items() if k != "model_config"}, 422, "model_config"),
        ({**payload, "model_config": {**model_config(local_lm.url), "credential": "owners-key"}}, 400,
         "model_config.credential"),
    ]
    for body_, status, field in bad:
        refused = other.post("/run/estimate", json=body_)
        assert refused.status_code == status, refused.text
        assert field in refused.text, refused.text
        if status == 400:
            assert refused.json()["field"] == field
    assert owner.post("/run/estimate", json={**payload, "model_config": {
        **model_config(local_lm.url), "credential": "owners-key"}}).status_code == 200
    assert other.post("/run/estimate", json={**payload, "username": "estimate-owner"}).status_code == 403
    assert stack.client().post("/run/estimate", json=payload).status_code == 401

    assert local_lm.stats()["calls"] == calls_before
    assert flow_run_count(stack) == runs_before
    assert not marker.exists()  # the signature was read, never run
    assert owner.get("/jobs").json()["total"] == 0
