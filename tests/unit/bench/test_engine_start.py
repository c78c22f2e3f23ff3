"""bench/engine_start.py: a warm engine's main-thread samples are split into the phases of
its path to Running; other threads and the wait for a job are not counted as start."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from engine_start import main_thread_phases  # noqa: E402

MAIN = "_run_module_as_main (<frozen runpy>:198);<module> (deployments/runtime/warm_entry.py:58)"
RAW = "\n".join([
    f"{MAIN};main (deployments/runtime/warm_entry.py:41);read_job_environment (x.py:1) 500",
    f"{MAIN};run_engine (z.py:180);adopt_environment (a.py:90);setup_logging (c.py:91) 20",
    f"{MAIN};run_flow_sync (prefect/flow_engine.py:2130);setup_flow_run_suspension_request (f.py:1) 30",
    f"{MAIN};run_flow_sync (prefect/flow_engine.py:2132);compile (tasks/compile.py:1) 100",
    f"{MAIN};somewhere_else (y.py:3) 2",
    "Thread._bootstrap (threading.py:1002);run (t.py:1);adopt_environment (a.py:1) 999",
])


def test_main_thread_samples_are_split_by_phase(tmp_path):
    raw = tmp_path / "engine.txt"
    raw.write_text(RAW + "\n")
    phases = main_thread_phases(raw, interval_ms=4)
    assert phases == {
        "idle: waiting for a job": 2000,
        "adopt the job's environment (ours)": 80,
        "suspension observer (Prefect)": 120,
        "flow body and end": 400,
        "other before Running": 8,
    }
