"""bench/compare.py: the peer is started as the original's README says (`uvicorn main:app`
in its checkout) and measured through the same HTTP client; the table has the issue's layout.

The stub checkout below answers the contract's shapes only; the real original service was
not available where this was written (the client is exercised against our own API by the
benchmark itself)."""

import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from compare import HttpTarget, PeerService, markdown  # noqa: E402

STUB_MAIN = textwrap.dedent(
    """
    import os
    from fastapi import FastAPI

    app = FastAPI()
    JOBS = {}

    @app.get("/health")
    def health():
        return {"status": "ok", "db": os.environ["LOCAL_DB_PATH"], "workers": os.environ["WORKER_CONCURRENCY"]}

    @app.post("/run", status_code=201)
    def run(body: dict):
        job_id = f"job-{len(JOBS)}"
        JOBS[job_id] = "success" if body.get("seed") != 13 else "failed"
        return {"job_id": job_id, "status": "pending"}

    @app.get("/jobs/{job_id}")
    def job(job_id: str):
        return {"job_id": job_id, "status": JOBS[job_id]}

    @app.get("/jobs")
    def jobs(limit: int = 50):
        return {"items": [{"job_id": k, "status": v} for k, v in JOBS.items()], "total": len(JOBS)}
    """
)


@pytest.fixture
def stub_peer(tmp_path):
    (tmp_path / "main.py").write_text(STUB_MAIN)
    service = PeerService(tmp_path, python=sys.executable)
    service.start(timeout=60)
    yield service
    service.stop()


def test_peer_is_started_from_its_checkout_and_measured_by_the_http_client(stub_peer):
    health = HttpTarget("peer", stub_peer.url).client.get("/health").json()
    assert health["db"].startswith(str(stub_peer.home)) and health["workers"] == "2"
    target = HttpTarget("peer", stub_peer.url)
    job_id, seconds = target.run_to_success({"seed": 1})
    assert target.statuses() == {job_id: "success"} and seconds >= 0
    with pytest.raises(RuntimeError, match="ended failed"):
        target.run_to_success({"seed": 13})
    stub_peer.stop()
    assert stub_peer.process.poll() is not None


def test_a_peer_that_never_gets_healthy_is_reported_with_its_log(tmp_path):
    (tmp_path / "main.py").write_text("raise SystemExit('no app here')\n")
    with pytest.raises(RuntimeError, match="no app here"):
        PeerService(tmp_path, python=sys.executable).start(timeout=30)


def test_table_has_a_column_per_target_and_the_issue_rows():
    def target(name, overhead, rate, get, lst):
        return {
            "target": name,
            "overhead": {"overhead_s": {"p50": overhead}},
            "throughput": {"jobs": 20, "jobs_per_min": rate},
            "get_job_ms": {"p50": get[0], "p99": get[1]},
            "list_jobs_ms": {"p50": lst[0], "p99": lst[1]},
            "stored_jobs": 31,
        }

    report = {
        "environment": {
            "date": "2026-12-05 04:00 UTC",
            "nproc": 2,
            "loadavg_at_start": [1.0],
            "loadavg_at_end": [2.0],
            "prefect": "3.9.1",
            "dspy": "3",
            "command": "bench/compare.py --quick",
        },
        "plain": [{"optimization_s": 1.5}],
        "targets": [
            target("ours, cold", 4.2, 18.7, (13.6, 33), (34, 67)),
            target("original", 0.48, 223, (2.9, 21), (9.7, 63)),
        ],
    }
    lines = markdown(report).splitlines()
    assert "| | ours, cold | original |" in lines
    assert any(line.startswith("| overhead per job p50") and "| 4.20 s | 0.48 s |" in line for line in lines)
    assert "| throughput, 20 small jobs, 2 slots | 18.7 jobs/min | 223 jobs/min |" in lines
    assert "| GET /jobs/{id} p50 / p99 | 13.6 / 33 ms | 2.9 / 21 ms |" in lines
    assert "| GET /jobs?limit=50 p50 / p99 | 34 / 67 ms | 9.7 / 63 ms |" in lines
