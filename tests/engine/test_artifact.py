"""The optimized program comes back usable: as a pickle in a fresh process, and pickle-free."""

import base64
import json
import subprocess
import sys
import textwrap

import dspy
import pytest

from tasks.user_code import exec_user_code, find_signature
from tests.support.flow_runner import run_flow
from tests.support.payloads import SECRET_KEY, job_payload


@pytest.fixture(scope="module")
def finished(local_lm):
    payload = job_payload(local_lm.url, rows=40)
    outcome = run_flow(payload)
    assert outcome.state.is_completed(), outcome.message
    return payload, outcome.result


def test_pickle_answers_in_a_fresh_process(finished, local_lm, tmp_path):
    payload, result = finished
    artifact = result["program_artifact"]
    pickle_path = tmp_path / "program.pkl"
    pickle_path.write_bytes(base64.b64decode(artifact["program_pickle_base64"]))
    script = textwrap.dedent(
        f"""
        import os, pickle, sys
        os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        import dspy
        program = pickle.load(open({str(pickle_path)!r}, "rb"))
        assert isinstance(program, dspy.Module), type(program)
        assert not any(name.startswith("dspy_user_code") for name in sys.modules)
        lm = dspy.LM("openai/local-arithmetic", api_base={local_lm.url!r}, api_key="fresh", cache=False)
        with dspy.context(lm=lm):
            print(program(question="What is 12 + 30?").answer)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].strip().lstrip("-").isdigit()
    assert artifact["metadata"]["dependency_versions"]["dspy"]


def test_json_state_reloads_into_rebuilt_module(finished):
    payload, result = finished
    state = result["program_artifact"]["program_state"]
    namespace, module_name = exec_user_code(payload["signature_code"], "signature_code")
    program = dspy.Predict(find_signature(namespace, module_name))
    program.load_state(state)
    demos = result["program_artifact"]["optimized_prompt"]["demos"]
    assert len(program.demos) == len(demos) > 0
    assert program.demos[0]["question"] == demos[0]["inputs"]["question"]


def test_no_api_key_in_any_form(finished):
    _, result = finished
    artifact = result["program_artifact"]
    assert SECRET_KEY.encode() not in base64.b64decode(artifact["program_pickle_base64"])
    assert SECRET_KEY not in json.dumps(result)


def test_prompt_is_readable(finished):
    _, result = finished
    prompt = result["program_artifact"]["optimized_prompt"]
    assert prompt["signature_name"] == "SolveArithmetic"
    assert prompt["input_fields"] == ["question"] and prompt["output_fields"] == ["answer"]
    assert "question" in prompt["formatted_prompt"]
    assert result["program_artifact"]["optimized_prompts"][0] == prompt
