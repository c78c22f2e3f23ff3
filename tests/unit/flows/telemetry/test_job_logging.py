"""The job's log capture without a server: levels, thread prints, warnings, progress kept apart."""

from __future__ import annotations

import logging
import sys
import threading
import warnings

from flows.telemetry.job_logging import job_logging


def by_logger(entries: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in entries:
        out.setdefault(entry["logger"], []).append(entry["message"])
    return out


def test_thread_prints_and_warnings_become_job_logs():
    before = sys.stdout
    with job_logging(None, "INFO") as capture:

        def metric_in_a_worker_thread(i: int) -> None:
            print("metric says", i, "in", threading.current_thread().name)

        threads = [threading.Thread(target=metric_in_a_worker_thread, args=(i,), name=f"worker-{i}") for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        warnings.warn("the user's metric is deprecated", UserWarning, stacklevel=1)
        logging.getLogger("dspy_service.progress").info('progress {"event": "progress"}')
    assert sys.stdout is before, "stdout is restored"
    logs = by_logger(capture.entries)
    assert sorted(logs["dspy_service.print"]) == [f"metric says {i} in worker-{i}" for i in range(4)]
    assert any("the user's metric is deprecated" in m for m in logs["py.warnings"])
    assert "dspy_service.progress" not in logs, "progress events are not log entries"


def test_the_configured_level_applies_to_dspy_loggers():
    with job_logging(None, "WARNING") as capture:
        logging.getLogger("dspy.teleprompt.example").info("an INFO line below the job's level")
        logging.getLogger("dspy.teleprompt.example").warning("a warning line")
    assert by_logger(capture.entries) == {"dspy.teleprompt.example": ["a warning line"]}


def test_the_telemetry_modules_log_to_the_job():
    from flows.telemetry import artifacts, labels, observe

    with job_logging(None, "INFO") as capture:
        for module in (artifacts, labels, observe):
            module.logger.warning("from %s", module.__name__)
    assert [entry["message"] for entry in capture.entries] == [
        "from flows.telemetry.artifacts",
        "from flows.telemetry.labels",
        "from flows.telemetry.observe",
    ]
