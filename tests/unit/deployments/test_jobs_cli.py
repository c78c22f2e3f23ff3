"""The pure parts of `dspy-service jobs`/`submit`: job files, artifact directories, exit
codes, output formatting, the parser (the commands against a real stack:
tests/integration/test_cli.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pandas as pd
import pytest

from deployments import jobs_cli
from deployments.cli import build_parser
from deployments.exit_codes import ExitCode, error_line, exit_code_for, exit_code_for_status
from deployments.job_files import JobFileError, load_job_file, read_dataset, write_artifact_dir
from dspy_service.client import AuthError, Conflict, InvalidRequest, JobFailed, NotFound, ServiceError

SIGNATURE = '''import dspy


class QA(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()
'''
METRIC = "def metric(example, pred, trace=None):\n    return float(example.answer == pred.answer)\n"
ROWS = [{"question": "What is 1 + 2?", "answer": "3"}, {"question": "What is 2 + 2?", "answer": "4"}]


# ---- job files ------------------------------------------------------------------------------


@pytest.fixture
def job_dir(tmp_path) -> Path:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "sig.py").write_text(SIGNATURE)
    (tmp_path / "code" / "metric.py").write_text(METRIC)
    pd.DataFrame(ROWS).to_csv(tmp_path / "rows.csv", index=False)
    return tmp_path


def test_a_yaml_job_file_reads_the_files_it_names_relative_to_itself(job_dir, monkeypatch, tmp_path_factory):
    job = job_dir / "job.yaml"
    job.write_text(
        "module_name: predict\n"
        "optimizer_name: bootstrap\n"
        "signature_code_file: code/sig.py\n"
        "metric_code_file: code/metric.py\n"
        "dataset_file: rows.csv\n"
        "model_config: {name: openai/x, base_url: 'http://h/v1'}\n"
    )
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    body = load_job_file(job)
    assert body == {
        "module_name": "predict",
        "optimizer_name": "bootstrap",
        "signature_code": SIGNATURE,
        "metric_code": METRIC,
        "dataset": ROWS,
        "model_config": {"name": "openai/x", "base_url": "http://h/v1"},
    }


def test_a_json_job_file_with_inline_code_and_an_absolute_dataset_path(job_dir):
    job = job_dir / "job.json"
    job.write_text(json.dumps({"signature_code": "x", "dataset_file": str(job_dir / "rows.csv")}))
    assert load_job_file(job) == {"signature_code": "x", "dataset": ROWS}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("signature_code: x\nsignature_code_file: code/sig.py\n", ["signature_code_file", "not both"]),
        ("dataset: []\ndataset_file: rows.csv\n", ["dataset_file", "not both"]),
        ("metric_code_file: code/missing.py\n", ["metric_code_file", "missing.py"]),
        ("dataset_file: rows.xlsx\n", ["dataset_file", ".csv"]),
        ("dataset_file: 3\n", ["dataset_file", "file path"]),
        ("- a list\n", ["top level", "mapping"]),
        ("a: [unclosed\n", ["does not parse"]),
    ],
)
def test_a_bad_job_file_is_one_error_naming_the_key(job_dir, content, words):
    job = job_dir / "job.yaml"
    job.write_text(content)
    with pytest.raises(JobFileError) as caught:
        load_job_file(job)
    for word in words:
        assert word in str(caught.value)
    assert exit_code_for(caught.value) == ExitCode.INVALID


def test_job_files_must_be_yaml_or_json_and_exist(tmp_path):
    with pytest.raises(JobFileError, match=r"\.yaml"):
        load_job_file(tmp_path / "job.toml")
    with pytest.raises(JobFileError, match="cannot read the job file"):
        load_job_file(tmp_path / "job.yaml")


def test_csv_cells_are_strings_and_empty_cells_empty_strings(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("question,answer,note\nWhat is 1 + 2?,3,\nWhat is 007?,007,NA\n")
    assert read_dataset(path) == [
        {"question": "What is 1 + 2?", "answer": "3", "note": ""},
        {"question": "What is 007?", "answer": "007", "note": "NA"},
    ]


def test_jsonl_and_json_rows_keep_their_json_types(tmp_path):
    rows = [{"q": "a", "n": 1, "x": 0.5, "ok": True, "tags": ["t"]}, {"q": "b", "n": 2, "x": None, "ok": False}]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    assert read_dataset(jsonl)[0] == rows[0]
    assert read_dataset(jsonl)[1]["x"] is None
    plain = tmp_path / "rows.json"
    plain.write_text(json.dumps(rows))
    assert read_dataset(plain) == rows


def test_parquet_rows_keep_their_types_and_missing_values_are_null(tmp_path):
    path = tmp_path / "rows.parquet"
    pd.DataFrame({"q": ["a", "b"], "n": [1, 2], "x": [0.5, float("nan")]}).to_parquet(path)
    assert read_dataset(path) == [{"q": "a", "n": 1, "x": 0.5}, {"q": "b", "n": 2, "x": None}]


@pytest.mark.parametrize(("name", "content"), [("rows.json", "[]"), ("rows.json", '{"a": 1}'), ("rows.jsonl", "{")])
def test_an_empty_or_malformed_dataset_file_is_an_error(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(JobFileError, match="dataset_file"):
        read_dataset(tmp_path / name)


# ---- artifact directory ---------------------------------------------------------------------


def trained_state() -> dict:
    import dspy

    from dspy_service.client.program import signature_from_code

    program = dspy.Predict(signature_from_code(SIGNATURE))
    program.demos = [dspy.Example(question="What is 5 + 5?", answer="10")]
    return json.loads(json.dumps(program.dump_state()))


def artifact(module_name: str = "predict") -> dict:
    return {
        "program_artifact": {
            "program_state": trained_state(),
            "optimized_prompt": {"input_fields": ["question"], "output_fields": ["answer"]},
        },
        "program_source": {
            "module_name": module_name,
            "module_kwargs": {},
            "signature_code": SIGNATURE,
            "metric_code": METRIC,
        },
    }


def python_blocks(readme: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme, re.S)


def run_snippet(snippet: str, directory: Path, monkeypatch) -> str:
    """Run a README snippet in `directory` with DSPy's DummyLM instead of its model line."""
    import dspy
    from dspy.utils.dummies import DummyLM

    monkeypatch.chdir(directory)
    lm = DummyLM([{"answer": "7"}])
    code = snippet.replace('dspy.configure(lm=dspy.LM("openai/gpt-4o-mini"))', "dspy.configure(lm=lm)")
    code = code.replace("print(program(", "RESULT = (program(")
    namespace = {"lm": lm}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert [demo["answer"] for demo in namespace["program"].dump_state()["demos"]] == ["10"]
    dspy.configure(lm=None)
    return namespace["RESULT"].answer


def test_the_artifact_directory_holds_state_code_and_a_readme_whose_snippets_run(tmp_path, monkeypatch):
    written = write_artifact_dir("job-1", artifact(), tmp_path / "out")
    assert [p.name for p in written] == ["program.json", "signature.py", "metric.py", "README.md"]
    out = tmp_path / "out"
    assert json.loads((out / "program.json").read_text()) == artifact()["program_artifact"]["program_state"]
    assert (out / "signature.py").read_text() == SIGNATURE
    assert (out / "metric.py").read_text() == METRIC
    readme = (out / "README.md").read_text()
    assert "job-1" in readme
    plain, client = python_blocks(readme)
    assert "dspy.Predict(signature" in plain and 'program(question="...")' in plain
    assert "build_program" in client
    assert run_snippet(plain, out, monkeypatch) == "7"
    assert run_snippet(client, out, monkeypatch) == "7"


def test_a_chain_of_thought_artifact_names_its_class_and_a_plugin_module_says_so(tmp_path):
    write_artifact_dir("j", artifact("cot"), tmp_path / "cot")
    assert "dspy.ChainOfThought(signature" in (tmp_path / "cot" / "README.md").read_text()
    write_artifact_dir("j", artifact("my_plugin_module"), tmp_path / "plugin")
    assert "plugin of the service" in (tmp_path / "plugin" / "README.md").read_text()


# ---- exit codes and errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (AuthError(401, "no token"), 3),
        (AuthError(403, "admins only"), 3),
        (NotFound(404, "job x not found"), 4),
        (JobFailed("x", "failed", "metric raised"), 5),
        (InvalidRequest(422, "field required", "model_config"), 6),
        (JobFileError("dataset_file: nope"), 6),
        (Conflict(409, "job is already success"), 7),
        (ServiceError(429, "too many active jobs"), 1),
        (httpx.ConnectError("refused"), 1),
        (KeyboardInterrupt(), 130),
        (RuntimeError("boom"), 1),
    ],
)
def test_each_class_of_error_has_its_exit_code(error, code):
    assert exit_code_for(error) == code


def test_an_error_is_one_line_naming_the_field():
    line = error_line(InvalidRequest(422, "Field required\n  (at the top)", "model_config"))
    assert line.startswith("error: model_config: Field required") and "\n" not in line
    assert error_line(httpx.ConnectError("refused")).startswith("error: cannot reach the service")
    assert error_line(KeyError("x")) == "error: KeyError: 'x'"


def test_only_a_successful_job_exits_zero():
    assert [exit_code_for_status(s) for s in ("success", "failed", "cancelled", "running")] == [0, 5, 5, 5]


# ---- formatting ------------------------------------------------------------------------------

JOBS = [
    {
        "job_id": "11111111-aaaa",
        "status": "success",
        "username": "ann",
        "optimizer_name": "bootstrap",
        "module_name": "predict",
        "created_at": "2026-12-03T10:11:12.345+00:00",
        "elapsed": "00:00:09",
        "baseline_test_metric": 0.4,
        "optimized_test_metric": 0.85,
    },
    {
        "job_id": "22222222-bbbb",
        "status": "running",
        "username": "bob",
        "optimizer_name": "miprov2",
        "module_name": "cot",
        "created_at": "2026-12-03T10:12:00+00:00",
        "latest_metrics": {"stage": "compile-program", "tqdm_percent": 45.4},
    },
    {"job_id": "33333333-cccc", "status": "failed", "message": "metric_code line 2 raised\nValueError: x"},
]


def test_the_job_table_is_aligned_with_scores_progress_and_reasons():
    lines = jobs_cli.format_job_table(JOBS).splitlines()
    assert lines[0].split() == ["JOB", "ID", "STATUS", "USER", "OPTIMIZER", "MODULE", "CREATED", "ELAPSED", "RESULT"]
    status_column = lines[0].index("STATUS")
    assert [line[status_column:].split()[0] for line in lines[1:]] == ["success", "running", "failed"]
    assert lines[1].endswith("0.40 -> 0.85")
    assert "2026-12-03 10:11:12" in lines[1]
    assert lines[2].endswith("compile-program 45%")
    assert lines[3].endswith("metric_code line 2 raised ValueError: x")
    assert lines[3].split()[2:5] == ["-", "-", "-"]


def test_a_summary_shows_what_is_set_and_usage_in_one_line():
    job = {
        **JOBS[0],
        "message": None,
        "usage": {"total": {"calls": 12, "total_tokens": 3400, "cache_hits": 2, "cost": 0.0012, "cost_known": True}},
    }
    text = jobs_cli.format_summary(job)
    assert "job:" in text and "11111111-aaaa" in text
    assert "message" not in text
    assert re.search(r"^test score: +0\.40 -> 0\.85 \(baseline -> optimized\)$", text, re.M)
    assert re.search(r"^usage: +12 LM calls, 3400 tokens, 2 cache hits, \$0\.0012$", text, re.M)
    job["usage"]["total"].update(errors=3, retries=7)
    assert re.search(r"^usage: +12 LM calls, 3400 tokens, 2 cache hits, 3 failed, 7 retries, \$0\.0012$",
                     jobs_cli.format_summary(job), re.M)


def test_log_entries_and_final_lines():
    entry = {"timestamp": "2026-12-03T10:11:12.5+00:00", "level": "INFO", "logger": "dspy.x", "message": "hi"}
    assert jobs_cli.format_log_entry(entry) == "2026-12-03 10:11:12 INFO    dspy.x: hi"
    assert jobs_cli.final_line(JOBS[0]) == (
        "job 11111111-aaaa success after 00:00:09: test score 0.40 -> 0.85 (baseline -> optimized)"
    )
    assert jobs_cli.final_line(JOBS[2]) == "job 33333333-cccc failed: metric_code line 2 raised ValueError: x"


# ---- parser and error handling ---------------------------------------------------------------


def test_url_and_token_go_on_the_group_or_the_subcommand_which_wins():
    parser = build_parser()
    args = parser.parse_args(["jobs", "--url", "http://a", "--token", "t", "show", "X"])
    assert (args.url, args.token, args.job_id, args.json) == ("http://a", "t", "X", False)
    args = parser.parse_args(["jobs", "--url", "http://a", "show", "X", "--url", "http://b", "--json"])
    assert (args.url, args.token, args.json) == ("http://b", None, True)
    args = parser.parse_args(["jobs", "list", "--status", "running", "--user", "ann", "--limit", "5"])
    assert (args.status, args.user, args.limit, args.url) == ("running", "ann", 5, None)
    args = parser.parse_args(["submit", "job.yaml", "--wait", "--url", "http://c"])
    assert (args.file, args.wait, args.url) == ("job.yaml", True, "http://c")
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["jobs", "list", "--status", "done"])
    assert caught.value.code == ExitCode.USAGE


class FailingClient:
    def __init__(self, error: BaseException):
        self.error = error

    def __enter__(self):
        return self

    def __exit__(self, *_):
        return False

    def job(self, job_id):
        raise self.error


def test_a_command_error_is_one_stderr_line_and_its_exit_code(monkeypatch, capsys):
    monkeypatch.setattr(jobs_cli, "client_of", lambda args: FailingClient(NotFound(404, "job X not found")))
    args = build_parser().parse_args(["jobs", "show", "X"])
    assert args.func(args) == ExitCode.NOT_FOUND
    out, err = capsys.readouterr()
    assert out == "" and err == "error: job X not found (404)\n"
