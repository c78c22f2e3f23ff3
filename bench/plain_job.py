"""The same optimization as a service job, in one plain Python process (no Prefect, no HTTP).

Runs the job's stages as plain functions (each Prefect task's `.fn`), in the order the
flow runs them, and prints one JSON line: seconds from interpreter start to imports done,
the optimization's own seconds, and the process's total.

    python bench/plain_job.py payload.json
"""

from __future__ import annotations

import time

T0 = time.time()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def main() -> int:
    from dspy_service.schemas import JobRequest
    from tasks.artifact import serialize_program_artifact
    from tasks.compile import compile_program
    from tasks.data import load_and_split_data
    from tasks.evaluate import evaluate_programs
    from tasks.language_models import build_language_models
    from tasks.user_code import load_user_code

    imported = time.time()
    request = JobRequest(**json.loads(Path(sys.argv[1]).read_text()))
    job, rows = request.spec(), request.dataset
    started = time.time()
    splits = load_and_split_data.fn(job, rows)
    lms = build_language_models.fn(job)
    user_code = load_user_code.fn(job, splits.train[0])
    compiled = compile_program.fn(job, splits, lms, user_code)
    scores = evaluate_programs.fn(compiled, splits, lms, user_code)
    serialize_program_artifact.fn(compiled.optimized, lms.secrets)
    done = time.time()
    print(
        json.dumps(
            {
                "imports_s": round(imported - T0, 3),
                "optimization_s": round(done - started, 3),
                "process_s": round(done - T0, 3),
                "baseline": scores.baseline,
                "optimized": scores.optimized,
                "lm_calls": lms.meter.snapshot()["total"]["calls"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
