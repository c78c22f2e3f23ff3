"""The champion gate rebuilds the champion from its JSON state and this job's code: a
pickle is refused unread, a state that does not fit this signature or module is refused
with a reason, and a pointer to a run of another schedule is refused."""

from __future__ import annotations

import copy
import uuid
from contextlib import contextmanager
from pathlib import Path

import dspy
import httpx
import pytest
from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
from prefect.serializers import JSONSerializer

from dspy_service.contract import CHAMPION_RESULT_ROUTE, SANDBOXED_ENV
from dspy_service.schemas import JobSpec
from dspy_service.testing.local_lm import make_arithmetic_dataset
from tasks import champion_program
from tasks.artifact import serialize_program_artifact
from tasks.champion import decide
from tasks.champion_program import ChampionUnloadable, load_champion_program
from tasks.compile import build_student
from tasks.data import DataSplits
from tasks.evaluate import mean_metric
from tasks.language_models import build_language_models
from tasks.user_code import UserCode, load_user_code
from tests.support.hostile_result import pickle_record, pickled_value
from tests.support.payloads import job_payload
from tests.support.result_storage import use_local_result_storage

SCHEDULE = str(uuid.uuid4())
INSTRUCTIONS = "Work through the problem step by step, then give only the final answer."
RENAMED_SIGNATURE = '''\
import dspy


class SolveArithmetic(dspy.Signature):
    """Answer the arithmetic question with a single integer."""

    query: str = dspy.InputField()
    answer: str = dspy.OutputField()
'''
WIDER_SIGNATURE = '''\
import dspy


class SolveArithmetic(dspy.Signature):
    """Answer the arithmetic question with a single integer."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()
    confidence: str = dspy.OutputField()
'''


def examples(rows: list[dict]) -> list[dspy.Example]:
    return [dspy.Example(**row).with_inputs("question") for row in rows]


def job(lm_url: str = "http://127.0.0.1:9", **overrides) -> tuple[JobSpec, UserCode]:
    spec = JobSpec.model_validate(job_payload(lm_url, rows=4, **overrides))
    mapping = spec.column_mapping.inputs
    sample = examples(make_arithmetic_dataset(1))[0]
    if "query" in mapping:
        sample = dspy.Example(query=sample.question, answer=sample.answer).with_inputs("query")
    return spec, load_user_code.fn(spec, sample)


def champion_result(module_name: str = "predict") -> dict:
    """The result a schedule's run stores: its optimized program (4 demos, a cue phrase)."""
    spec, user_code = job(module_name=module_name)
    program = build_student(spec, user_code)
    for _, predictor in program.named_predictors():
        predictor.demos = examples(make_arithmetic_dataset(4, seed=99))
        predictor.signature = predictor.signature.with_instructions(INSTRUCTIONS)
    artifact = serialize_program_artifact.fn(program, [])
    return {"program_artifact": artifact.model_dump(mode="json"), "optimized_test_metric": 0.8}


class Prefect:
    """Flow runs as the Prefect API's JSON, served to the gate's client."""

    def __init__(self):
        self.runs: dict[str, dict] = {}
        self.proxy_answer: tuple[int, dict] | None = None  # what a sandboxed job's proxy answers

    def add(self, key: str, *, schedule_id: str | None = SCHEDULE, serializer: str = "json", state: str = "COMPLETED"):
        run_id = str(uuid.uuid4())
        data = {"storage_key": key, "storage_block_id": None, "serializer": {"type": serializer}}
        self.runs[run_id] = {
            "id": run_id,
            "parameters": {"job": {}, **({"schedule_id": schedule_id} if schedule_id else {})},
            "state": {"type": state, "name": state.title(), "data": data},
        }
        return run_id

    def request(self, method: str, path: str, path_params: dict | None = None) -> httpx.Response:
        request = httpx.Request(method, f"http://prefect/api{path.format(**(path_params or {}))}")
        if path == CHAMPION_RESULT_ROUTE:
            assert self.proxy_answer is not None, "a job that is not sandboxed reads the champion itself"
            return httpx.Response(self.proxy_answer[0], json=self.proxy_answer[1], request=request).raise_for_status()
        run = self.runs.get(str(path_params["id"]))
        response = httpx.Response(200 if run else 404, json=run or {"detail": "Not found"}, request=request)
        return response.raise_for_status()


@pytest.fixture
def prefect(monkeypatch) -> Prefect:
    server = Prefect()

    @contextmanager
    def client():
        yield server

    monkeypatch.setattr(champion_program, "sync_prefect_client", client)
    return server


@pytest.fixture
def storage(tmp_path, monkeypatch) -> Path:
    """Results live under tmp_path (as under PREFECT_LOCAL_STORAGE_PATH on a stack)."""
    return use_local_result_storage(monkeypatch, tmp_path)


def stored(storage: Path, value: dict) -> str:
    """A result file as a flow writes it (the value alone, serialized with JSON)."""
    key = str(storage / f"result-{uuid.uuid4().hex}")
    Path(key).write_bytes(
        ResultRecord(metadata=ResultRecordMetadata(storage_key=key, serializer=JSONSerializer()),
                     result=value).serialize_result()
    )
    return key


@pytest.mark.parametrize("module_name", ["predict", "cot"])
def test_the_champion_state_loads_into_a_module_built_from_this_jobs_code(prefect, storage, module_name):
    result = champion_result(module_name)
    result["program_artifact"]["program_pickle_base64"] = "not a pickle: never read"
    run_id = prefect.add(stored(storage, result))
    spec, user_code = job(module_name=module_name)
    program = load_champion_program(SCHEDULE, run_id, spec, user_code)
    assert type(program) is type(build_student(spec, user_code))
    (_, predictor), = program.named_predictors()
    assert [demo["question"] for demo in predictor.demos] == [
        row["question"] for row in make_arithmetic_dataset(4, seed=99)
    ]
    assert predictor.signature.instructions == INSTRUCTIONS and predictor.lm is None
    assert list(predictor.signature.output_fields)[-1] == "answer"


def test_the_loaded_champion_is_scored_with_its_demos_and_instructions(prefect, storage, local_lm):
    spec, user_code = job(local_lm.url)
    lms = build_language_models.fn(spec)
    test = examples(make_arithmetic_dataset(30, seed=5))
    splits = DataSplits(train=test[:1], val=[], test=test, rows=31, content_sha256="", seed=0)
    with dspy.context(lm=lms.main):
        zero_shot = mean_metric(build_student(spec, user_code), test, user_code.metric, 1)
    pointer = {"job_id": prefect.add(stored(storage, champion_result())), "optimized_test_metric": 0.8}

    def load(job_id):
        return load_champion_program(SCHEDULE, job_id, spec, user_code)

    decision = decide(pointer, zero_shot, splits, lms, user_code, load)
    assert decision.champion_score > zero_shot, decision
    assert not decision.promoted and "does not beat the champion" in decision.reason


@pytest.mark.parametrize("pickled", ["the file is a pickle record", "the state names pickle"])
def test_a_pickle_result_is_refused_and_never_unpickled(prefect, storage, tmp_path_factory, pickled):
    marker, key = tmp_path_factory.mktemp("proof") / "touched", str(storage / "result")
    if pickled == "the file is a pickle record":
        Path(key).write_bytes(pickle_record(key, marker))
        run_id = prefect.add(key)
    else:
        Path(key).write_bytes(pickled_value(marker))
        run_id = prefect.add(key, serializer="pickle")
    spec, user_code = job()
    decision = decide({"job_id": run_id}, 0.5, DataSplits([], [], [], 0, "", 0), None, user_code,
                      lambda job_id: load_champion_program(SCHEDULE, job_id, spec, user_code))
    assert decision.promoted and decision.champion_job_id == run_id
    assert decision.reason == (
        f"the champion {run_id} could not be loaded (its result is refused: the result was written with the "
        "'pickle' serializer; only 'json' is read); this run replaces it"
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    ("overrides", "why", "champion_module"),
    [
        ({"signature_code": WIDER_SIGNATURE}, "has 2 fields, this run's signature 3", "predict"),
        (
            {"signature_code": RENAMED_SIGNATURE, "column_mapping": {"inputs": {"query": "question"},
                                                                     "outputs": {"answer": "answer"}}},
            "was built for question -> answer, this run's signature has query -> answer",
            "predict",
        ),
        ({"module_name": "cot"}, "its program has no predictor 'predict'", "predict"),
        ({}, "its program is not a single predictor", "cot"),
    ],
    ids=["a field more", "a field renamed", "cot now", "predict now"],
)
def test_a_state_that_does_not_fit_this_signature_is_refused(prefect, storage, overrides, why, champion_module):
    run_id = prefect.add(stored(storage, champion_result(champion_module)))
    spec, user_code = job(**overrides)
    with pytest.raises(ChampionUnloadable, match=why) as refused:
        load_champion_program(SCHEDULE, run_id, spec, user_code)
    assert str(refused.value).endswith("the schedule's module or signature changed since")


def test_state_entries_that_dump_state_never_writes_are_refused_and_saved_lms_dropped(prefect, storage):
    result = champion_result()
    state = result["program_artifact"]["program_state"]  # a Predict's state is its own
    state["lm"] = {"model": "openai/elsewhere", "api_base": "http://attacker.example"}
    spec, user_code = job()
    program = load_champion_program(SCHEDULE, prefect.add(stored(storage, result)), spec, user_code)
    assert all(predictor.lm is None for predictor in program.predictors())

    hostile = copy.deepcopy(result)
    # `config` would become the arguments of every LM call
    hostile["program_artifact"]["program_state"]["config"] = {"api_base": "http://attacker.example"}
    with pytest.raises(ChampionUnloadable, match=r"unexpected state entries \['config'\]"):
        load_champion_program(SCHEDULE, prefect.add(stored(storage, hostile)), spec, user_code)
    del result["program_artifact"]["program_state"]
    with pytest.raises(ChampionUnloadable, match="its result has no program state"):
        load_champion_program(SCHEDULE, prefect.add(stored(storage, result)), spec, user_code)


def test_a_pointer_to_a_run_of_another_schedule_is_refused_unread(prefect, storage, tmp_path_factory):
    marker, key = tmp_path_factory.mktemp("proof") / "touched", str(storage / "result")
    Path(key).write_bytes(pickle_record(key, marker))
    spec, user_code = job()
    cases = {
        prefect.add(key, schedule_id=str(uuid.uuid4())): f"its run is not a run of schedule {SCHEDULE}",
        prefect.add(key, schedule_id=None): f"its run is not a run of schedule {SCHEDULE}",
        prefect.add(key, state="FAILED"): "its run is Failed, not Completed",
        str(uuid.uuid4()): "its run no longer exists",
        "../flow_runs/filter": "its job id is not a flow-run id",
    }
    for job_id, why in cases.items():
        with pytest.raises(ChampionUnloadable) as refused:
            load_champion_program(SCHEDULE, job_id, spec, user_code)
        assert str(refused.value) == why
    assert not marker.exists()
    assert load_champion_program(SCHEDULE.upper(), prefect.add(stored(storage, champion_result())), spec, user_code)


def test_a_sandboxed_job_takes_the_champion_from_its_proxy_and_checks_it_again(prefect, monkeypatch):
    monkeypatch.setenv(SANDBOXED_ENV, "1")
    spec, user_code = job()
    run_id = prefect.add("read by the proxy, not here")
    run, result = prefect.runs[run_id], champion_result()
    prefect.proxy_answer = (200, {"job_id": run_id, "run": run, "result": result})
    program = load_champion_program(SCHEDULE, run_id, spec, user_code)
    assert program.predictors()[0].signature.instructions == INSTRUCTIONS

    refusals = [
        (200, {"job_id": str(uuid.uuid4()), "run": run, "result": result}, "the champion changed to"),
        (200, {"job_id": run_id, "run": {**run, "parameters": {"job": {}}}, "result": result},
         f"its run is not a run of schedule {SCHEDULE}"),
        (200, {"job_id": run_id, "run": run, "result": None}, "its result has no program state"),
        (422, {"job_id": run_id, "detail": "its run is Failed, not Completed"}, "its run is Failed, not Completed"),
        (404, {"detail": "no champion"}, "the schedule has no champion any more"),
    ]
    for status, body, why in refusals:
        prefect.proxy_answer = (status, body)
        with pytest.raises(ChampionUnloadable, match=why):
            load_champion_program(SCHEDULE, run_id, spec, user_code)
    prefect.proxy_answer = (502, {"detail": "sandbox: the champion could not be read (ConnectError)"})
    with pytest.raises(httpx.HTTPStatusError):  # propagates like any Prefect error of the direct path
        load_champion_program(SCHEDULE, run_id, spec, user_code)
