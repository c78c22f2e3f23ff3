"""The `dspy-service` console script against a real stack (issue 14, item 3): every `jobs`
subcommand and `submit`, run as a subprocess the way a user runs them, with the exit codes
of deployments/exit_codes.py; the optimized program written by `jobs artifact` runs in a
fresh Python process; `jobs watch` under tmux shows the progress bar a user sees."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dspy_service.testing.local_lm import ARITHMETIC_METRIC_CODE, ARITHMETIC_SIGNATURE_CODE, make_arithmetic_dataset
from tests.support.payloads import model_config, tenant_model
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

DSPY_SERVICE = str(Path(sys.executable).with_name("dspy-service"))
ROOT = Path(__file__).resolve().parents[2]
BROKEN_METRIC = "def metric(example, pred, trace=None):\n    raise ValueError('broken metric')\n"


def admin_token(stack) -> str:
    return stack.api.headers["Authorization"].split()[1]


def cli(stack, *args: str, token: str | None = None, timeout: float = 240, cwd: Path | None = None):
    """Run `dspy-service ARGS` against the stack (URL and token from the environment)."""
    env = {
        **os.environ,
        "DSPY_SERVICE_URL": stack.stack.config.api_url,
        "DSPY_SERVICE_TOKEN": token or admin_token(stack),
        "COLUMNS": "120",
    }
    return subprocess.run(
        [DSPY_SERVICE, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def write_job(directory: Path, lm_url: str, *, rows: int = 20, metric: str = ARITHMETIC_METRIC_CODE, model=None):
    """job.yaml naming code/sig.py, code/metric.py and data/rows.csv (relative paths)."""
    (directory / "code").mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    (directory / "code" / "sig.py").write_text(ARITHMETIC_SIGNATURE_CODE)
    (directory / "code" / "metric.py").write_text(metric)
    pd.DataFrame(make_arithmetic_dataset(rows, seed=11)).to_csv(directory / "data" / "rows.csv", index=False)
    body = {
        "module_name": "predict",
        "optimizer_name": "bootstrap",
        "optimizer_kwargs": {"max_bootstrapped_demos": 2, "max_labeled_demos": 0},
        "signature_code_file": "code/sig.py",
        "metric_code_file": "code/metric.py",
        "dataset_file": "data/rows.csv",
        "column_mapping": {"inputs": {"question": "question"}, "outputs": {"answer": "answer"}},
        "split_fractions": {"train": 0.5, "val": 0.2, "test": 0.3},
        "seed": 11,
        "model_config": model or model_config(lm_url),
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def job_file(tmp_path_factory, local_lm) -> Path:
    return write_job(tmp_path_factory.mktemp("cli-job"), local_lm.url)


@pytest.fixture(scope="module")
def finished(stack, job_file) -> str:
    """A job submitted from the yaml file, ended: its id."""
    submitted = cli(stack, "submit", str(job_file))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    uuid.UUID(job_id)
    assert stack.wait_terminal(job_id)["status"] == "success"
    return job_id


def test_watch_of_a_successful_job_exits_0_with_its_final_line(stack, finished):
    watched = cli(stack, "jobs", "watch", finished)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert watched.stdout.startswith(f"job {finished} success after"), watched.stdout
    assert "test score" in watched.stdout


def test_list_and_show_find_the_submitted_job(stack, finished):
    listed = cli(stack, "jobs", "list", "--json", "--status", "success", "--limit", "500")
    assert listed.returncode == 0, listed.stderr
    items = {item["job_id"]: item for item in json.loads(listed.stdout)["items"]}
    assert items[finished]["status"] == "success" and items[finished]["dataset_rows"] == 20
    human = cli(stack, "jobs", "list", "--limit", "500")
    assert human.stdout.splitlines()[0].split()[:3] == ["JOB", "ID", "STATUS"]
    assert any(line.startswith(finished) and " success " in line for line in human.stdout.splitlines())
    assert finished not in cli(stack, "jobs", "list", "--status", "failed", "--limit", "500").stdout

    shown = cli(stack, "jobs", "show", finished, "--json")
    summary = json.loads(shown.stdout)
    assert (summary["job_id"], summary["status"], summary["optimizer_name"]) == (finished, "success", "bootstrap")
    human = cli(stack, "jobs", "--url", stack.stack.config.api_url, "show", finished).stdout
    assert re.search(r"^status: +success$", human, re.M) and "test score:" in human


def test_logs_and_followed_logs_of_a_finished_job(stack, finished):
    logs = cli(stack, "jobs", "logs", finished)
    assert logs.returncode == 0 and len(logs.stdout.splitlines()) > 3, logs.stderr
    as_json = [json.loads(line) for line in cli(stack, "jobs", "logs", finished, "--json").stdout.splitlines()]
    assert {"timestamp", "level", "logger", "message"} <= set(as_json[0])
    assert len(as_json) == len(logs.stdout.splitlines()) or any("\n" in e["message"] for e in as_json)
    followed = cli(stack, "jobs", "logs", finished, "-f", timeout=60)  # ends: the job has ended
    assert followed.returncode == 0, followed.stderr
    assert len(followed.stdout.splitlines()) >= len(as_json)


def test_the_artifact_directory_loads_in_a_fresh_python(stack, finished, tmp_path, local_lm):
    out = tmp_path / "program"
    written = cli(stack, "jobs", "artifact", finished, "-o", str(out))
    assert written.returncode == 0, written.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "metric.py", "program.json", "signature.py"]
    assert json.loads((out / "program.json").read_text())["demos"]
    local = f'dspy.configure(lm=dspy.LM("openai/local-arithmetic", api_base={local_lm.url!r}, api_key="k"))'
    for snippet in re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S):
        code = snippet.replace('dspy.configure(lm=dspy.LM("openai/gpt-4o-mini"))', local)
        code = code.replace('program(question="...")', 'program(question="What is 12 + 30?").answer')
        ran = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert re.fullmatch(r"-?\d+", ran.stdout.strip()), ran.stdout


def test_a_deleted_job_is_not_found_afterwards(stack, job_file):
    job_id = cli(stack, "submit", str(job_file)).stdout.strip()
    stack.wait_terminal(job_id)
    deleted = cli(stack, "jobs", "delete", job_id)
    assert (deleted.returncode, deleted.stdout.strip()) == (0, f"job {job_id} deleted")
    gone = cli(stack, "jobs", "show", job_id)
    assert gone.returncode == 4 and gone.stdout == ""
    assert job_id in one_error_line(gone)


def test_a_failed_job_makes_submit_wait_and_watch_exit_5(stack, tmp_path, local_lm):
    bad = write_job(tmp_path, local_lm.url, metric=BROKEN_METRIC)
    waited = cli(stack, "submit", str(bad), "--wait")
    assert waited.returncode == 5, waited.stdout + waited.stderr
    job_id = re.search(r"submitted job (\S+)", waited.stderr).group(1)
    assert waited.stdout.startswith(f"job {job_id} failed") and "broken metric" in waited.stdout
    watched = cli(stack, "jobs", "watch", job_id, "--json")
    assert watched.returncode == 5 and json.loads(watched.stdout)["status"] == "failed"


def test_cancel_then_watch_exits_5_and_a_second_cancel_conflicts(stack, tmp_path, local_lm):
    job = write_job(tmp_path, local_lm.url, rows=40, model=tenant_model(local_lm.url))
    local_lm.set_delay(300)
    try:
        job_id = cli(stack, "submit", str(job), "--json").stdout
        job_id = json.loads(job_id)["job_id"]
        cancelled = cli(stack, "jobs", "cancel", job_id)
        assert (cancelled.returncode, cancelled.stdout.strip()) == (0, f"job {job_id} cancelled"), cancelled.stderr
        watched = cli(stack, "jobs", "watch", job_id)
        assert watched.returncode == 5 and watched.stdout.startswith(f"job {job_id} cancelled"), watched.stdout
    finally:
        local_lm.set_delay(0)
    again = cli(stack, "jobs", "cancel", job_id)
    assert again.returncode == 7 and "already cancelled" in one_error_line(again)


@pytest.mark.sqlite_only
def test_errors_are_one_line_and_their_exit_code(stack, tmp_path, job_file):
    missing = cli(stack, "jobs", "show", str(uuid.uuid4()))
    assert missing.returncode == 4 and "not found" in one_error_line(missing)
    bad_token = cli(stack, "jobs", "list", token="dss.nobody.wrong")
    assert bad_token.returncode == 3 and one_error_line(bad_token)
    body = yaml.safe_load(job_file.read_text())
    del body["model_config"]
    invalid = tmp_path / "job.yaml"
    invalid.write_text(yaml.safe_dump(body))
    shutil.copytree(job_file.parent / "code", tmp_path / "code")
    shutil.copytree(job_file.parent / "data", tmp_path / "data")
    refused = cli(stack, "submit", str(invalid))
    assert refused.returncode == 6 and "model_config" in one_error_line(refused)
    unreadable = cli(stack, "submit", str(tmp_path / "nope.yaml"))
    assert unreadable.returncode == 6 and "nope.yaml" in one_error_line(unreadable)
    unreachable = cli(stack, "jobs", "list", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 1 and "cannot reach" in one_error_line(unreachable)
    usage = cli(stack, "jobs", "list", "--status", "done")
    assert usage.returncode == 2


# ---- the progress bar as a user sees it ---------------------------------------------------


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True, timeout=30).stdout


@pytest.mark.sqlite_only
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_jobs_watch_draws_the_bar_in_a_terminal(stack, tmp_path, local_lm):
    job = write_job(tmp_path, local_lm.url, rows=40, model=tenant_model(local_lm.url))
    session = f"dspy-cli-{uuid.uuid4().hex[:8]}"
    local_lm.set_delay(250)
    try:
        job_id = cli(stack, "submit", str(job)).stdout.strip()
        env = f"DSPY_SERVICE_URL={stack.stack.config.api_url} DSPY_SERVICE_TOKEN={admin_token(stack)}"
        command = f"env {env} {DSPY_SERVICE} jobs watch {job_id}; echo exit=$?; sleep 600"
        tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "30", command)
        screens: list[str] = []

        def ended() -> str | None:
            screens.append(tmux("capture-pane", "-p", "-t", session))
            return screens[-1] if "exit=" in screens[-1] else None

        final = wait_until(ended, 180, 0.2, what=lambda: f"`jobs watch` to end: {screens[-1:]}")
    finally:
        local_lm.set_delay(0)
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=30)
    bar = re.compile(rf"job {job_id[:8]} running \| [a-z-]+.*\d+%\|")
    running = [screen for screen in screens if bar.search(screen)]
    assert running, screens[-5:]
    assert re.search(rf"job {job_id[:8]} success:.* 100%\|", final), final
    assert f"job {job_id} success after" in final and "exit=0" in final
    if os.environ.get("DSPY_SERVICE_WRITE_CAPTURE"):
        middle = running[len(running) // 2]
        (ROOT / "docs" / "cli-watch-capture.txt").write_text(
            "# `dspy-service jobs watch ID` in a 120x30 tmux pane (tests/integration/test_cli.py)\n"
            "# while the job runs:\n" + middle.rstrip() + "\n# at the end:\n" + final.rstrip() + "\n"
        )


@pytest.mark.sqlite_only
def test_the_demo_follows_its_job_through_the_client(stack, local_lm):
    demo = cli(stack, "demo", "--lm-url", local_lm.url)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert re.search(r"^demo job \S+ submitted \(bootstrap", demo.stdout, re.M), demo.stdout
    succeeded = r"^demo job succeeded: test accuracy [\d.]+ \(baseline\) -> [\d.]+ \(optimized\)$"
    assert re.search(succeeded, demo.stdout, re.M), demo.stdout


@pytest.mark.sqlite_only
def test_estimate_prints_a_table_or_json_and_calls_no_lm(stack, job_file, local_lm):
    calls_before = local_lm.stats()["calls"]
    table = cli(stack, "estimate", str(job_file))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "estimate of BootstrapFewShot on predict (10 train / 4 val / 6 test examples)", table.stdout
    header = next(line for line in lines if line.startswith("STAGE"))
    assert "LM CALLS (low / typical / ceiling)" in header and "TOKENS" in header and "USD" in header
    baseline = next(line for line in lines if line.startswith("baseline eval"))
    assert baseline.split()[2:7] == ["6", "/", "6", "/", "6"], baseline  # calls: 6 test examples
    assert any(line.startswith("total") for line in lines) and "assumptions:" in lines
    as_json = cli(stack, "estimate", str(job_file), "--json")
    assert as_json.returncode == 0, as_json.stderr
    figures = json.loads(as_json.stdout)
    assert figures["stages"]["baseline_evaluation"]["lm_calls"] == {"low": 6, "typical": 6, "ceiling": 6}
    assert figures["total"]["cost_usd"] is None and baseline.split()[-1] == "-"  # the local LM has no price
    missing = cli(stack, "estimate", str(job_file.parent / "nope.yaml"))
    assert missing.returncode == 6 and "nope.yaml" in one_error_line(missing)
    assert local_lm.stats()["calls"] == calls_before
