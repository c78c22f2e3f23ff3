"""Issue #17: POST /run/estimate against what the same jobs really used, per optimizer.

For each optimizer: the estimate of a ChainOfThought job on the local LM's arithmetic task,
then the job itself (one at a time, on a private SQLite stack, each with a cold LM cache),
its usage per role from the result (`details.usage`) and the local LM server's own count of
the requests it answered. Each job runs twice: with the LM cache (the default; a prompt
repeated within the job is answered from the cache) and with `extra.cache: false` in its
model configs (every call reaches the LM server). The typical figure is judged against the
LM calls the program made (paid calls + cache answers; with the cache off, what the LM
server counted) and should be within ±30 %.

    PYTHONPATH=. .venv/bin/python bench/estimate_accuracy.py [--optimizers bootstrap,gepa] [--cache on,off]
        [--json out.json] [--in-process]

`--in-process` runs each job's stages as plain functions in this process (as
`plain_job.py` does: the same stage code, no stack) and calls `estimate_job` directly: the
same usage counts without a Prefect server, for a quick look.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchStack, payload  # noqa: E402

from tests.support.stack import start_job_lm  # noqa: E402

TARGET = 0.30
# name -> (optimizer_kwargs, extra body). Light settings, DSPy defaults where they are cheap.
RUNS: dict[str, tuple[dict, dict]] = {
    "labeled_few_shot": ({"k": 4}, {}),
    "bootstrap": ({"max_bootstrapped_demos": 4, "max_labeled_demos": 0}, {}),
    "bootstrap (labeled teacher)": ({"max_bootstrapped_demos": 4, "max_labeled_demos": 4}, {}),
    "bootstrap_random_search": ({"num_candidate_programs": 4, "max_bootstrapped_demos": 2, "max_labeled_demos": 2},
                                {}),
    "miprov2": ({"auto": "light", "max_bootstrapped_demos": 2, "max_labeled_demos": 2}, {}),
    "gepa": ({"auto": "light"}, {"reflection_model_config": "openai/local-reflection"}),
    "copro": ({"breadth": 4, "depth": 2}, {}),
    "simba": ({"bsize": 8, "num_candidates": 4, "max_steps": 4, "max_demos": 2}, {}),
}


def body(lm_url: str, name: str, seed: int, cache: bool = True) -> dict:
    """The job; a fresh api key per model scopes its LM cache (no job starts warm)."""
    kwargs, extra = RUNS[name]
    job = payload(lm_url, seed, optimizer=name.split(" ")[0], rows=60)
    job["optimizer_kwargs"] = dict(kwargs)
    job.pop("username")
    if "reflection_model_config" in extra:
        job["reflection_model_config"] = {"name": extra["reflection_model_config"], "base_url": lm_url,
                                          "extra": {"api_key": f"bench-{uuid.uuid4().hex}"}}
    if not cache:
        for key in ("model_config", "reflection_model_config"):
            if key in job:
                job[key]["extra"]["cache"] = False
    return job


def run_job(api: httpx.Client, job: dict, timeout: float = 1800) -> dict:
    response = api.post("/run", json=job)
    response.raise_for_status()
    job_id = response.json()["job_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        summary = api.get(f"/jobs/{job_id}/summary").json()
        if summary["status"] in ("success", "failed", "cancelled"):
            detail = api.get(f"/jobs/{job_id}").json()
            return {"job_id": job_id, "status": summary["status"], "message": summary.get("message"),
                    "usage": ((detail.get("result") or {}).get("details") or {}).get("usage")}
        time.sleep(1)
    raise TimeoutError(f"job {job_id} did not end in {timeout:g} s")


def measure(api: httpx.Client | InProcess, lm, name: str, seed: int, cache: bool) -> dict:
    job = body(lm.url, name, seed, cache)
    if isinstance(api, InProcess):
        est = api.estimate(job)
    else:
        estimate = api.post("/run/estimate", json=job)
        estimate.raise_for_status()
        est = estimate.json()
    before = lm.stats()["calls"]
    outcome = run_in_process(job) if isinstance(api, InProcess) else run_job(api, job)
    served = lm.stats()["calls"] - before
    total = (outcome["usage"] or {}).get("total") or {}
    made = total.get("calls", 0) + total.get("cache_hits", 0)
    typical = est["total"]["lm_calls"]["typical"]
    return {
        "optimizer": name,
        "cache": "on" if cache else "off",
        "status": outcome["status"],
        "message": outcome["message"],
        "estimate_calls": est["total"]["lm_calls"],
        "estimate_compile_calls": est["stages"]["compile"]["lm_calls"],
        "estimate_tokens_typical": est["total"]["total_tokens"]["typical"],
        "calls_made": made,
        "paid_calls": total.get("calls"),
        "cache_hits": total.get("cache_hits"),
        "served_by_lm": served,
        "actual_tokens": total.get("total_tokens"),
        "by_role": {role: usage.get("calls", 0) + usage.get("cache_hits", 0)
                    for role, usage in ((outcome["usage"] or {}).get("by_role") or {}).items()},
        "typical_error": round((typical - made) / made, 3) if made else None,
    }


def run_in_process(job: dict) -> dict:
    """The job's stages as plain functions, as the flow runs them; its usage snapshot."""
    from dspy_service.schemas import JobRequest
    from tasks.compile import compile_program
    from tasks.data import load_and_split_data
    from tasks.evaluate import evaluate_programs
    from tasks.language_models import build_language_models
    from tasks.user_code import load_user_code

    request = JobRequest(**job)
    spec = request.spec()
    splits = load_and_split_data.fn(spec, request.dataset)
    lms = build_language_models.fn(spec)
    user_code = load_user_code.fn(spec, splits.train[0])
    compiled = compile_program.fn(spec, splits, lms, user_code)
    evaluate_programs.fn(compiled, splits, lms, user_code)
    return {"job_id": None, "status": "success", "message": None, "usage": lms.meter.snapshot()}


class InProcess:
    """`measure`'s API, answered in this process."""

    def estimate(self, job: dict) -> dict:
        from dspy_service.estimate import estimate_job
        from dspy_service.schemas import JobRequest

        request = JobRequest(**job)
        return estimate_job(request.spec(), request.dataset).as_dict()


def markdown(rows: list[dict]) -> str:
    lines = [
        "| optimizer | LM cache | estimate low / typical / ceiling | calls made (paid + cached) | LM server count | "
        "typical vs made | within ±30 % | tokens est. / actual |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = r["estimate_calls"]
        error = r["typical_error"]
        ok = "yes" if error is not None and abs(error) <= TARGET else "**no**"
        lines.append(
            f"| {r['optimizer']} | {r['cache']} | {e['low']} / {e['typical']} / {e['ceiling']} | {r['calls_made']} "
            f"({r['paid_calls']} + {r['cache_hits']}) | {r['served_by_lm']} | "
            f"{'' if error is None else f'{error:+.0%}'} | {ok} | {r['estimate_tokens_typical']} / "
            f"{r['actual_tokens']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", default=",".join(RUNS))
    parser.add_argument("--cache", default="on,off", help="LM cache modes to run each job in")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--in-process", action="store_true", help="no stack: the job's stages in this process")
    args = parser.parse_args()
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    lm = start_job_lm()
    rows: list[dict] = []

    def run_all(api: httpx.Client | InProcess) -> None:
        for name in names:
            for mode in args.cache.split(","):
                rows.append(measure(api, lm, name, args.seed, cache=mode.strip() == "on"))
                print(json.dumps(rows[-1]), flush=True)

    try:
        if args.in_process:
            os.environ["DSPY_SERVICE_HOME"] = tempfile.mkdtemp(prefix="bench-estimate-")
            run_all(InProcess())
        else:
            with BenchStack(db="sqlite", job_slots=1, prefix="bench-estimate-") as bench:
                print(f"stack up in {bench.start():.1f} s", flush=True)
                with httpx.Client(base_url=bench.api_url, timeout=120, headers=bench.api_headers) as api:
                    run_all(api)
    finally:
        lm.close()
    text = markdown(rows)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        mode = "in-process" if args.in_process else "stack"
        args.json.write_text(json.dumps({"mode": mode, "rows": rows, "markdown": text}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
