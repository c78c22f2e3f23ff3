"""A version's document (built from a job's spec and JSON result), its info, and the
exported zip that `load_program` reads back into a real dspy.Module (no pickle)."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from dspy_service.client import build_program, load_program
from dspy_service.client.program_files import looks_like_path
from dspy_service.program_documents import build_document, program_info
from dspy_service.program_export import export_archive, read_archive
from dspy_service.schemas import JobRequest
from dspy_service.testing.local_lm import ARITHMETIC_SIGNATURE_CODE
from tests.support.payloads import SECRET_KEY, job_payload

DEMOS = [{"question": "What is 2 + 3?", "answer": "5"}]


def real_state() -> dict:
    """The JSON state of a real dspy.Predict with one demo and new instructions."""
    import dspy

    source = {"module_name": "predict", "module_kwargs": {}, "signature_code": ARITHMETIC_SIGNATURE_CODE}
    program = build_program(source)
    program.demos = [dspy.Example(**demo) for demo in DEMOS]
    program.signature = program.signature.with_instructions("Answer carefully.")
    return program.dump_state()


def job_result() -> dict:
    state = real_state()
    prompt = {
        "predictor_name": "predict",
        "signature_name": "SolveArithmetic",
        "instructions": "Answer carefully.",
        "input_fields": ["question"],
        "output_fields": ["answer"],
        "demos": DEMOS,
    }
    return {
        "module_name": "predict",
        "optimizer_name": "bootstrap",
        "metric_name": "arithmetic_exact_match",
        "split_counts": {"train": 10, "val": 4, "test": 6},
        "baseline_test_metric": 0.5,
        "optimized_test_metric": 0.83,
        "metric_improvement": 0.33,
        "details": {"dataset_rows": 20, "dataset_sha256": "ab" * 32},
        "program_artifact": {
            "program_pickle_base64": "bm90IGEgcGlja2xl",
            "metadata": {"dependency_versions": {"python": "3.12", "dspy": "3.4.1"}},
            "optimized_prompts": [prompt],
            "program_state": state,
        },
    }


@pytest.fixture
def document() -> dict:
    spec = JobRequest.model_validate(job_payload("http://127.0.0.1:9/v1", rows=20)).spec()
    built = build_document(spec, job_result())
    return {**built, "name": "qa", "version": 2, "owner": "alice", "job_id": "job-1", "created_at": "now"}


def test_the_document_holds_what_rebuilds_and_describes_the_program_and_no_secret(document):
    assert document["signature_code"] == ARITHMETIC_SIGNATURE_CODE
    assert document["module_name"] == "predict" and document["program_state"]["demos"] == DEMOS
    assert document["metrics"]["optimized_test_metric"] == 0.83
    assert document["dataset"] == {"rows": 20, "sha256": "ab" * 32}
    assert len(document["metric_code_sha256"]) == 64
    assert document["model_config"]["name"] == "openai/local-arithmetic"
    assert document["versions"]["dspy"] == "3.4.1"
    assert (document["input_fields"], document["output_fields"]) == (["question"], ["answer"])
    assert document["demo_count"] == 1
    text = json.dumps(document)
    assert SECRET_KEY not in text and "program_pickle_base64" not in text


def test_a_result_without_program_state_is_refused(document):
    spec = JobRequest.model_validate(job_payload("http://127.0.0.1:9/v1", rows=20)).spec()
    result = job_result()
    result["program_artifact"]["program_state"] = {}
    with pytest.raises(ValueError, match="no program state"):
        build_document(spec, result)


def test_info_shows_fields_instructions_and_demos(document):
    info = program_info(document)
    assert info["input_fields"] == ["question"] and info["output_fields"] == ["answer"]
    assert info["instructions"] == ["Answer carefully."] and info["demo_count"] == 1
    assert info["predictors"][0]["name"] == "predict" and info["model"] == "openai/local-arithmetic"


def test_the_export_loads_as_a_dspy_module_from_the_zip_and_from_its_directory(document, tmp_path):
    path = tmp_path / "qa-v2.zip"
    path.write_bytes(export_archive(document))
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["README.md", "manifest.json", "program.json", "signature.py"]
        manifest = json.loads(archive.read("manifest.json"))
        readme = archive.read("README.md").decode()
        archive.extractall(tmp_path / "extracted")
    assert "program_state" not in manifest and manifest["module_name"] == "predict" and manifest["version"] == 2
    assert 'load_program("qa-v2.zip")' in readme and "dspy.Predict(signature)" in readme
    for source in (path, tmp_path / "extracted"):
        program = load_program(source)
        assert [demo["answer"] for demo in program.demos] == ["5"]
        assert program.signature.instructions == "Answer carefully."
        assert list(program.signature.input_fields) == ["question"]


def test_the_readmes_plain_dspy_code_loads_the_program(document, tmp_path, monkeypatch):
    with zipfile.ZipFile(io.BytesIO(export_archive(document))) as archive:
        archive.extractall(tmp_path)
    plain_dspy = (tmp_path / "README.md").read_text().split("```python")[2].split("```")[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(plain_dspy, namespace)  # noqa: S102 - the README's own example
    program = namespace["program"]
    assert [demo["answer"] for demo in program.demos] == ["5"] and program.signature.instructions == "Answer carefully."


def test_load_program_tells_paths_from_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qa").mkdir()  # a directory that is no export: "qa" is still a name
    assert not looks_like_path("qa") and not looks_like_path("prod-qa_2")
    assert looks_like_path("qa-v1.zip") and looks_like_path("exports/qa") and looks_like_path(tmp_path / "qa")
    (tmp_path / "qa" / "manifest.json").write_text("{}")
    assert looks_like_path("qa")


def test_what_is_not_an_export_is_refused_naming_what_is_missing(tmp_path, document):
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(ValueError, match="neither a zip file"):
        read_archive(tmp_path / "plain.txt")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "signature.py").write_text(ARITHMETIC_SIGNATURE_CODE)
    with pytest.raises(ValueError, match="program.json, manifest.json"):
        read_archive(partial)
    with pytest.raises(ValueError, match="not of a file"):
        load_program(tmp_path / "missing.zip", version=1)
