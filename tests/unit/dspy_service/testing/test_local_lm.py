"""The local test LM against real DSPy: parsing, the skill model, stats, faults, optimizers.

Every LM is built with cache=False and set with dspy.context (never dspy.configure), so
each test sees exactly the HTTP calls it causes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy  # noqa: E402
import pydantic  # noqa: E402
import pytest  # noqa: E402

from dspy_service.testing.local_lm import (  # noqa: E402
    ARITHMETIC_METRIC_CODE,
    ARITHMETIC_SIGNATURE_CODE,
    LocalLMServer,
    make_arithmetic_dataset,
    start_local_lm,
)
from dspy_service.testing.local_lm.prompts import read_prompt  # noqa: E402
from dspy_service.testing.local_lm.responder import compose_reply  # noqa: E402
from dspy_service.testing.local_lm.task import INSTRUCTION_VARIANTS, Question, attempt, has_cue  # noqa: E402
from tests.support.polling import wait_until  # noqa: E402

REPO = Path(__file__).resolve().parents[4]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server():
    with start_local_lm() as running:
        yield running


@pytest.fixture
def lm(server):
    server.reset()
    server.set_faults(0)
    server.set_delay(0)
    return make_lm(server)


def make_lm(server: LocalLMServer, model: str = "openai/local-model", **kwargs) -> dspy.LM:
    return dspy.LM(model, api_base=server.url, api_key="local", cache=False, **kwargs)


@pytest.fixture(scope="module")
def arithmetic():
    namespace: dict = {"dspy": dspy}
    exec(ARITHMETIC_SIGNATURE_CODE, namespace)  # noqa: S102 - our own example code
    exec(ARITHMETIC_METRIC_CODE, namespace)  # noqa: S102
    return namespace["SolveArithmetic"], namespace["metric"]


def examples(n: int, seed: int) -> list[dspy.Example]:
    return [dspy.Example(**row).with_inputs("question") for row in make_arithmetic_dataset(n, seed=seed)]


def http(server: LocalLMServer, method: str, path: str, body: dict | bytes | None = None):
    """(status, decoded JSON or text, headers) of one raw request; errors are returned, not raised."""
    base = server.url.removesuffix("/v1")
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw, headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, raw, headers = exc.code, exc.read(), exc.headers
    text = raw.decode()
    try:
        return status, json.loads(text), headers
    except json.JSONDecodeError:
        return status, text, headers


def chat(server: LocalLMServer, content: str = "hello", **extra):
    return http(
        server,
        "POST",
        "/v1/chat/completions",
        {"model": "local-model", "messages": [{"role": "user", "content": content}], **extra},
    )


class Item(pydantic.BaseModel):
    name: str
    qty: int


class MadeUp(dspy.Signature):
    """Describe the input in several typed ways."""

    text: str = dspy.InputField()
    count: int = dspy.OutputField()
    ratio: float = dspy.OutputField()
    flag: bool = dspy.OutputField(desc="a flag")
    tags: list[str] = dspy.OutputField()
    kind: Literal["alpha", "beta"] = dspy.OutputField()
    scores: dict[str, int] = dspy.OutputField()
    item: Item = dspy.OutputField()
    maybe: int | None = dspy.OutputField()


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("adapter", [None, dspy.JSONAdapter()], ids=["chat", "json"])
def test_predict_and_cot_parse_arithmetic_answers(lm, arithmetic, adapter):
    signature, _ = arithmetic
    with dspy.context(lm=lm, adapter=adapter):
        plain = dspy.Predict(signature)(question="What is 37 + 45?")
        cot = dspy.ChainOfThought(signature)(question="What is 37 + 45?")
    assert plain.answer.lstrip("-").isdigit()
    assert cot.answer.lstrip("-").isdigit()
    assert cot.reasoning == f"37 + 45 = {cot.answer}."
    # Two calls, no adapter fallback: the first reply already parsed.
    assert len(lm.history) == 2


@pytest.mark.parametrize("adapter", [None, dspy.JSONAdapter(), dspy.XMLAdapter()], ids=["chat", "json", "xml"])
def test_any_signature_parses(lm, adapter):
    with dspy.context(lm=lm, adapter=adapter):
        out = dspy.Predict(MadeUp)(text="anything")
        cot = dspy.ChainOfThought(MadeUp)(text="anything")
    assert isinstance(out.count, int) and isinstance(out.ratio, float) and isinstance(out.flag, bool)
    assert isinstance(out.tags, list) and all(isinstance(t, str) for t in out.tags)
    assert out.kind == "alpha"
    assert isinstance(out.scores, dict) and isinstance(out.item, Item)
    assert isinstance(cot.reasoning, str) and cot.kind == "alpha"
    assert len(lm.history) == 2, "each call parsed on the first try (no JSONAdapter fallback)"


def test_replies_are_deterministic(server):
    first = chat(server, "What is 37 + 45?")[1]["choices"][0]["message"]["content"]
    second = chat(server, "What is 37 + 45?")[1]["choices"][0]["message"]["content"]
    assert first == second


# --------------------------------------------------------------------------- skill model


def test_skill_model_rates():
    questions = [Question(a, "+", b) for a in range(2, 40) for b in range(2, 12)]

    def accuracy(demos: int, instructions: str) -> float:
        return sum(attempt(q, demos, instructions).correct for q in questions) / len(questions)

    assert 0.25 <= accuracy(0, "Answer the question.") <= 0.35
    assert 0.72 <= accuracy(4, "Answer the question.") <= 0.84
    assert accuracy(9, "Answer the question.") == accuracy(4, "Answer the question.")  # demos capped at 4
    assert 0.45 <= accuracy(0, "Think step by step.") <= 0.55
    wrong = [attempt(q, 0, "") for q in questions if not attempt(q, 0, "").correct]
    assert all(1 <= abs(a.given - a.question.answer) <= 9 for a in wrong)


def test_bootstrap_few_shot_beats_zero_shot(lm, arithmetic):
    signature, metric = arithmetic
    data = examples(60, seed=11)
    train, held_out = data[:30], data[30:]
    with dspy.context(lm=lm):
        evaluate = dspy.Evaluate(devset=held_out, metric=metric, num_threads=4, display_progress=False)
        zero_shot = evaluate(dspy.Predict(signature)).score
        compiled = dspy.BootstrapFewShot(metric=metric, max_bootstrapped_demos=4, max_labeled_demos=4).compile(
            dspy.Predict(signature), trainset=train
        )
        bootstrapped = evaluate(compiled).score
    assert 20 <= zero_shot <= 50
    assert bootstrapped >= zero_shot + 20, (zero_shot, bootstrapped)


# --------------------------------------------------------------------------- stats


def test_stats_match_dspy_calls_and_reported_usage(server, lm, arithmetic):
    signature, metric = arithmetic
    other = make_lm(server, "openai/other-model")
    before = time.time()
    with dspy.context(lm=lm):
        dspy.Evaluate(devset=examples(12, seed=4), metric=metric, num_threads=4, display_progress=False)(
            dspy.ChainOfThought(signature)
        )
    with dspy.context(lm=other):
        dspy.Predict(signature)(question="What is 2 * 9?")
    stats = server.stats()
    history = lm.history + other.history
    assert stats["calls"] == len(history) == 13
    assert stats["failed_calls"] == 0
    assert stats["prompt_tokens"] == sum(entry["usage"]["prompt_tokens"] for entry in history)
    assert stats["completion_tokens"] == sum(entry["usage"]["completion_tokens"] for entry in history)
    assert stats["by_model"]["local-model"]["calls"] == 12
    assert stats["by_model"]["other-model"]["calls"] == 1
    assert len(stats["call_times"]) == 13 and all(before - 1 <= t <= time.time() for t in stats["call_times"])
    status, body, _ = http(server, "POST", "/stats/reset", {})
    assert status == 200 and body["calls"] == 0 and server.stats()["by_model"] == {}


def test_usage_is_deterministic_from_characters(server, lm):
    status, body, _ = chat(server, "x" * 10, n=3)
    assert status == 200
    assert [c["message"]["content"] for c in body["choices"]] == [body["choices"][0]["message"]["content"]] * 3
    content = body["choices"][0]["message"]["content"]
    assert body["usage"]["prompt_tokens"] == 3  # ceil(10 / 4)
    assert body["usage"]["completion_tokens"] == 3 * -(-len(content) // 4)
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert body["model"] == "local-model" and body["object"] == "chat.completion"
    assert body["id"] and body["created"] and body["choices"][0]["finish_reason"] == "stop"


# --------------------------------------------------------------------------- faults & latency


def test_fault_injection_over_http(server, lm):
    status, body, _ = http(server, "POST", "/faults", {"count": 2, "status": 429})
    assert status == 200 and body["count"] == 2
    first, second, third = chat(server), chat(server), chat(server)
    assert first[0] == second[0] == 429
    assert set(first[1]["error"]) >= {"message", "type", "code"}
    assert third[0] == 200
    stats = server.stats()
    assert stats["failed_calls"] == 2 and stats["calls"] == 1
    # {"count": 0} clears a pending fault.
    http(server, "POST", "/faults", {"count": 5, "status": 503})
    http(server, "POST", "/faults", {"count": 0})
    assert chat(server)[0] == 200
    assert http(server, "POST", "/faults", {"count": 1, "status": 200})[0] == 400


def test_counts_and_faults_are_exact_under_concurrency(server, lm):
    from concurrent.futures import ThreadPoolExecutor

    server.set_faults(10, 500)
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda i: chat(server, f"request {i}")[0], range(80)))
    assert statuses.count(500) == 10 and statuses.count(200) == 70
    stats = server.stats()
    assert stats["calls"] == 70 and stats["failed_calls"] == 10 and len(stats["call_times"]) == 70


def test_dspy_retries_injected_faults(server, lm):
    # Retry-After: 0 makes DSPy's retry immediate; without it, DSPy backs off 1 s, 2 s, ...
    server.set_faults(2, 503, retry_after=0)
    assert lm("hello")
    assert server.stats()["failed_calls"] == 2 and server.stats()["calls"] == 1
    server.set_faults(1, 429)
    with pytest.raises(dspy.utils.exceptions.LMRateLimitError):
        make_lm(server, num_retries=0)("hello")


def test_faults_for_one_model_pass_its_first_requests_and_spare_the_others(server, lm):
    status, body, _ = http(server, "POST", "/faults", {"count": 2, "status": 400, "model": "reflect", "after": 1})
    assert status == 200 and (body["model"], body["after"]) == ("reflect", 1)
    assert chat(server, model="reflect")[0] == 200  # the first request for it passes
    assert chat(server)[0] == 200  # another model's requests never count
    assert [chat(server, model="reflect")[0] for _ in range(3)] == [400, 400, 200]
    assert http(server, "POST", "/faults", {"count": 1, "after": -1})[0] == 400
    assert http(server, "POST", "/faults", {"count": 1, "model": 7})[0] == 400


def test_refusing_models_answer_a_refusal(server, lm):
    status, body, _ = http(server, "POST", "/config", {"refuse_models": ["proposer"]})
    assert status == 200 and body["refuse_models"] == ["proposer"]
    try:
        answer = chat(server, model="proposer")[1]["choices"][0]["message"]["content"]
        assert answer.startswith("I'm ready to assist")
        assert "ready to assist" not in chat(server)[1]["choices"][0]["message"]["content"]
        assert http(server, "POST", "/config", {"refuse_models": "proposer"})[0] == 400
    finally:
        server.refuse()


def test_delay_config(server, lm):
    assert http(server, "POST", "/config", {"delay_ms": 150})[1] == {"delay_ms": 150.0, "refuse_models": []}
    started = time.perf_counter()
    assert chat(server)[0] == 200
    assert time.perf_counter() - started >= 0.15
    server.set_delay(0)
    assert http(server, "GET", "/config")[1] == {"delay_ms": 0.0}


# --------------------------------------------------------------------------- HTTP surface


def test_http_surface(server):
    assert http(server, "GET", "/health")[:2] == (200, {"status": "ok"})
    status, models, _ = http(server, "GET", "/v1/models")
    assert status == 200 and "local-model" in [m["id"] for m in models["data"]]
    assert http(server, "GET", "/nope")[0] == 404
    # dspy 3.4.1 only calls /v1/responses for model_type="responses"; not served here.
    status, body, _ = http(server, "POST", "/v1/responses", {"model": "m", "input": "hi"})
    assert status == 404 and "error" in body
    assert http(server, "POST", "/v1/chat/completions", b"{not json")[0] == 400
    assert http(server, "POST", "/v1/chat/completions", {"model": "m", "messages": []})[0] == 400


def test_response_format_json_schema(server):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}}}
    status, body, _ = chat(server, "hi", response_format={"type": "json_schema", "json_schema": {"schema": schema}})
    assert status == 200 and json.loads(body["choices"][0]["message"]["content"]) == {"answer": "text", "n": 1}


def test_streaming(server):
    status, text, headers = chat(server, "hi", stream=True, stream_options={"include_usage": True})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert chunks[-1]["usage"]["total_tokens"] > 0


# --------------------------------------------------------------------------- proposers


def _reply(messages: list[dict]) -> str:
    return compose_reply(read_prompt(messages))


def test_instruction_proposals_vary_and_half_have_cues():
    assert sum(has_cue(v) for v in INSTRUCTION_VARIANTS) * 2 == len(INSTRUCTION_VARIANTS)
    adapter = dspy.ChatAdapter()
    signature = dspy.Signature("basic_instruction, tip -> proposed_instruction", "Propose an instruction.")
    replies = set()
    for tip in range(12):
        messages = adapter.format(signature, [], {"basic_instruction": "Answer it.", "tip": f"tip {tip}"})
        parsed = adapter.parse(signature, _reply(messages))
        replies.add(parsed["proposed_instruction"])
    assert replies <= set(INSTRUCTION_VARIANTS) and len(replies) >= 3


def test_gepa_plain_reflection_prompt_gets_a_fenced_cue_instruction():
    from gepa.strategies.instruction_proposal import InstructionProposalSignature

    prompt = InstructionProposalSignature.prompt_renderer(
        {
            "current_instruction_doc": "Answer the question.",
            "dataset_with_feedback": [
                {"Inputs": {"question": "What is 2 + 2?"}, "Generated Outputs": "5", "Feedback": "wrong"}
            ],
        }
    )
    reply = _reply([{"role": "user", "content": prompt}])
    new = InstructionProposalSignature.output_extractor(reply)["new_instruction"]
    assert new.startswith("Answer the question.") and has_cue(new)


def test_free_form_prompt_gets_a_short_reply(server, lm):
    (reply,) = lm("Say something.")
    assert reply and "[[" not in reply and reply == lm("Say something.")[0]


# --------------------------------------------------------------------------- task helpers


def test_dataset_and_example_code(arithmetic):
    rows = make_arithmetic_dataset(50, seed=3)
    assert rows == make_arithmetic_dataset(50, seed=3) and rows != make_arithmetic_dataset(50, seed=4)
    assert len({r["question"] for r in rows}) == 50
    for row in rows:
        a, op, b = row["question"].removeprefix("What is ").removesuffix("?").split()
        assert row["answer"] == str({"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op])
    signature, metric = arithmetic
    assert list(signature.input_fields) == ["question"] and list(signature.output_fields) == ["answer"]
    assert not has_cue(signature.instructions)
    example = dspy.Example(question="What is 1 + 1?", answer="2")
    assert metric(example, dspy.Prediction(answer=" 2 ")) == 1.0
    assert metric(example, dspy.Prediction(answer="3"), None, "predict", None) == 0.0


# --------------------------------------------------------------------------- CLI


def test_cli_port_file_and_sigterm(tmp_path):
    port_file = tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "dspy_service.testing.local_lm", "--port", "0", "--port-file", str(port_file)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(port_file.exists, 10, 0.02, what="the local LM to write its port file")
        port = int(port_file.read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            assert json.load(response) == {"status": "ok"}
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert f"http://127.0.0.1:{port}/v1" in stderr


# --------------------------------------------------------------------------- optimizers


def test_miprov2_light_runs(server, lm, arithmetic):
    signature, metric = arithmetic
    prompt_lm = make_lm(server, "openai/local-proposer")
    with dspy.context(lm=lm):
        optimizer = dspy.MIPROv2(metric=metric, auto="light", num_threads=2, prompt_model=prompt_lm, verbose=False)
        program = optimizer.compile(
            dspy.ChainOfThought(signature),
            trainset=examples(20, seed=21),
            max_bootstrapped_demos=2,
            max_labeled_demos=2,
        )
    assert program.predict.signature.instructions
    assert server.stats()["by_model"]["local-proposer"]["calls"] > 0


def test_gepa_light_runs(server, lm, arithmetic):
    signature, metric = arithmetic
    data = examples(20, seed=7)  # 2 of the 10 train questions sit where a cue phrase flips them
    reflection_lm = make_lm(server, "openai/local-reflection")
    with dspy.context(lm=lm):
        optimizer = dspy.GEPA(metric=metric, auto="light", num_threads=2, reflection_lm=reflection_lm)
        program = optimizer.compile(dspy.ChainOfThought(signature), trainset=data[:10], valset=data[10:])
    assert server.stats()["by_model"]["local-reflection"]["calls"] > 0
    # The reflection LM only ever adds cue phrases, so the winner carries one.
    assert has_cue(program.predict.signature.instructions)
