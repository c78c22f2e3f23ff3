"""The Python client as a notebook user meets it, against a real stack and the local LM.

A script defines a signature class and a metric function, optimizes a ChainOfThought on a
DataFrame with a `dspy.LM` through `Client.optimize(..., wait=True)`; a second, fresh
process takes `job.program()` and answers new questions with it. Also: the LM's key is a
credential, never part of the job; the API's refusals arrive as typed errors naming the
field; the async twin reads the same job.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import dspy
import pytest

from dspy_service.client import AsyncClient, Client, InvalidRequest, NotFound
from dspy_service.testing.local_lm import make_arithmetic_dataset
from tests.support.payloads import job_payload, model_config

KEY = "sk-notebook-key-0123456789"

NOTEBOOK = textwrap.dedent(
    '''
    import json
    import sys

    import dspy
    import pandas as pd

    from dspy_service.client import Client
    from dspy_service.testing.local_lm import make_arithmetic_dataset


    class SolveArithmetic(dspy.Signature):
        """Answer the arithmetic question with a single integer."""

        question: str = dspy.InputField(desc="an arithmetic question such as 'What is 37 + 45?'")
        answer: str = dspy.OutputField(desc="the result as a bare integer, e.g. 82")


    def normalize(text):
        return str(text).strip()


    def metric(example, pred, trace=None):
        return float(normalize(example.answer) == normalize(pred.answer))


    trainset = pd.DataFrame(make_arithmetic_dataset(30, seed=11))
    lm = dspy.LM("openai/local-arithmetic", api_base=sys.argv[1], api_key=sys.argv[2])
    client = Client()
    job = client.optimize(
        dspy.ChainOfThought(SolveArithmetic), metric, trainset=trainset, model=lm, optimizer="bootstrap",
        optimizer_kwargs={"max_bootstrapped_demos": 4, "max_labeled_demos": 0},
        split={"train": 0.5, "val": 0.2, "test": 0.3}, seed=3, name="notebook", wait=True,
    )
    print(json.dumps({"job_id": job.id, "summary": job.summary()}))
    '''
)

FRESH_PROCESS = textwrap.dedent(
    '''
    import json
    import sys

    import dspy

    from dspy_service.client import Client
    from dspy_service.testing.local_lm import make_arithmetic_dataset

    program = Client().job(sys.argv[1]).program()
    lm = dspy.LM("openai/local-arithmetic", api_base=sys.argv[2], api_key="local", cache=False)
    fresh = make_arithmetic_dataset(20, seed=999)
    plain = dspy.ChainOfThought(program.predict.signature.delete("reasoning"))
    with dspy.context(lm=lm):
        optimized = [str(program(question=row["question"]).answer).strip() == row["answer"] for row in fresh]
        zero_shot = [str(plain(question=row["question"]).answer).strip() == row["answer"] for row in fresh]
    print(json.dumps({
        "demos": len(program.predict.demos), "optimized": sum(optimized), "zero_shot": sum(zero_shot),
        "pickle_loaded": "pickle" in sys.modules and any("program.pkl" in str(m) for m in sys.modules),
    }))
    '''
)


def run_notebook(tmp_path, cells: list[str], env: dict[str, str]):
    """Execute `cells` in a real Jupyter kernel (nbclient + ipykernel), as a notebook user would."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    resources = {"metadata": {"path": str(tmp_path)}}
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources=resources)
    client.execute(env=env)  # the kernel's environment
    return notebook


def run_script(tmp_path, name: str, source: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / name
    path.write_text(source)
    return subprocess.run(
        [sys.executable, str(path), *args], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )


def user_env(stack, name: str) -> tuple[dict[str, str], str]:
    token = stack.add_user(name).headers["Authorization"].removeprefix("Bearer ")
    env = {**os.environ, "DSPY_SERVICE_URL": stack.stack.config.api_url, "DSPY_SERVICE_TOKEN": token}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    return env, token


@pytest.mark.sqlite_only
def test_a_notebook_optimizes_real_dspy_objects_and_a_fresh_process_runs_the_program(stack, local_lm, tmp_path):
    env, _ = user_env(stack, "notebook-user")
    notebook = run_script(tmp_path, "notebook.py", NOTEBOOK, env, local_lm.url, KEY)
    assert notebook.returncode == 0, notebook.stderr[-3000:]
    answer = json.loads(notebook.stdout.strip().splitlines()[-1])
    summary = answer["summary"]
    assert summary["status"] == "success", summary
    assert summary["name"] == "notebook" and summary["module_name"] == "cot"
    assert summary["optimized_test_metric"] >= summary["baseline_test_metric"]
    assert "100%" in notebook.stderr and "success" in notebook.stderr  # the bar reached its end

    run = stack.flow_run(answer["job_id"])
    assert KEY not in json.dumps(run)
    assert run["parameters"]["job"]["model_config"]["credential"].startswith("lm-")

    fresh = run_script(tmp_path, "fresh.py", FRESH_PROCESS, env, answer["job_id"], local_lm.url)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    used = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert used["demos"] >= 1
    assert used["optimized"] > used["zero_shot"], used
    assert not used["pickle_loaded"]


@pytest.mark.sqlite_only
def test_refusals_are_typed_errors_and_the_async_client_reads_the_same_jobs(stack, local_lm):
    env, token = user_env(stack, "client-errors")
    with Client(env["DSPY_SERVICE_URL"], token) as client:
        with pytest.raises(InvalidRequest) as refused:
            client.submit({"module_name": "predict", "signature_code": "x", "metric_code": "x",
                           "optimizer_name": "bootstrap", "column_mapping": {"inputs": {"q": "q"}},
                           "dataset": [{"q": 1}]})
        assert refused.value.field == "model_config"
        with pytest.raises(NotFound):
            client.job("00000000-0000-0000-0000-000000000000")
        listed = list(client.jobs(limit=5))

    async def read_async():
        async with AsyncClient(env["DSPY_SERVICE_URL"], token) as client:
            return [job.id async for job in client.jobs(limit=5)]

    assert asyncio.run(read_async()) == [job.id for job in listed]


@pytest.mark.sqlite_only
def test_in_jupyter_wait_draws_a_widget_bar_that_ends_at_success(stack, local_lm, tmp_path):
    env, _ = user_env(stack, "jupyter-user")
    setup, _, rest = NOTEBOOK.partition("trainset = ")
    notebook = run_notebook(
        tmp_path,
        [
            f"import sys\nsys.argv = ['notebook', {local_lm.url!r}, {KEY!r}]\n" + setup,
            "trainset = " + rest,
        ],
        env,
    )
    outputs = notebook.cells[1].outputs
    summary = json.loads(next(o["text"] for o in outputs if o.get("name") == "stdout").strip().splitlines()[-1])
    assert summary["summary"]["status"] == "success"
    # tqdm.auto chose the notebook bar: a widget, whose last state is the job's end.
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    states = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    values = [w["state"] for w in states.values()]
    assert any(v.get("value") == 100 and v.get("max") == 100 for v in values), values
    assert any("success" in str(v.get("value", "")) for v in values if v.get("value") != 100), values


class AddNumbers(dspy.Signature):
    """Answer the arithmetic question with a single integer."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def exact_answer(example, pred, trace=None):
    return float(str(example.answer).strip() == str(pred.answer).strip())


@pytest.mark.sqlite_only
def test_estimate_answers_for_a_raw_body_and_for_optimize_s_arguments_without_an_lm_call(stack, local_lm):
    env, token = user_env(stack, "client-estimate")
    rows = make_arithmetic_dataset(30, seed=11)
    calls_before = local_lm.stats()["calls"]
    with Client(env["DSPY_SERVICE_URL"], token) as client:
        body = job_payload(local_lm.url, rows=30)
        del body["username"]
        raw = client.estimate(body)
        assert raw["username"] == "client-estimate" and raw["optimizer"] == "BootstrapFewShot"
        assert raw["stages"]["baseline_evaluation"]["lm_calls"] == {"low": 9, "typical": 9, "ceiling": 9}
        built = client.estimate(
            dspy.Predict(AddNumbers), exact_answer, rows, optimizer="bootstrap",
            model=model_config(local_lm.url), split={"train": 0.5, "val": 0.2, "test": 0.3},
        )
        assert built["split_counts"] == raw["split_counts"] == {"train": 15, "val": 6, "test": 9}
        assert built["total"]["lm_calls"]["typical"] > 0
        with pytest.raises(InvalidRequest) as refused:
            client.estimate({k: v for k, v in body.items() if k != "model_config"})
        assert refused.value.field == "model_config"

    async def estimate_async():
        async with AsyncClient(env["DSPY_SERVICE_URL"], token) as client:
            return await client.estimate(body)

    assert asyncio.run(estimate_async())["total"] == raw["total"]
    assert local_lm.stats()["calls"] == calls_before
