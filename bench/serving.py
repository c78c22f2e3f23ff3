"""Serving a registered program: warm predict latency against the LM's own, the cold first
call of a version, memory per loaded program (issue #15, item 3).

Starts a private stack (SQLite, sandbox as configured) and the local LM answering after
`--delay-ms`; runs one LabeledFewShot job (4 demos) with a credential, registers its
program `--versions` times (each version is loaded cold once), then measures

- **LM alone**: an uncached `dspy.LM` call to the local LM from this process (its delay
  plus its HTTP handling and the client's), `--n` times;
- **in-process predict**: the registered program built in this process and called under
  `dspy.context(lm=...)`, no service around it;
- **warm predict, API**: POST /programs/{name}/predict (one input, loaded version), naming
  the version by number, by alias, and not at all (`latest`), wall time at the client;
- **warm predict, program server**: the same call straight to the program server (with
  the internal token): what the API's resolution and forwarding add is the difference.
  The four warm paths are interleaved, one call each per round, `--n` rounds;
- **cold first call**: the first predict of each version (start a sandboxed process,
  import DSPy, build the program), at the client;
- **RSS per loaded program**: of each child's program process (and of its bubblewrap
  helpers), read from /proc.

    PYTHONPATH=. .venv/bin/python bench/serving.py --delay-ms 100 --n 200 --json bench/results/serving.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
from common import BenchStack, summarize

from deployments.runtime import procfs
from tests.support.payloads import job_payload
from tests.support.programs import program_server, register, registry_of, set_alias, store_call
from tests.support.stack import RunningStack, start_job_lm

QUESTION = {"question": "What is 37 + 45?"}


def timed(call) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = call()
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.text
    return elapsed, response


def rss_mb(pid: int | None) -> float:
    return (procfs.memory_mb(pid) or 0.0) if pid else 0.0


def lm_alone(lm_url: str, n: int) -> list[float]:
    """One uncached `dspy.LM` call to the local LM from this process (the client the
    program's process uses too), `n` times."""
    import dspy

    lm = dspy.LM("openai/local-arithmetic", api_base=lm_url, api_key="sk-bench", cache=False, num_retries=0)
    lm("What is 37 + 45?")  # the client's first-call setup is not the LM's latency
    times = []
    for _ in range(n):
        started = time.perf_counter()
        lm("What is 37 + 45?")
        times.append((time.perf_counter() - started) * 1000)
    return times


def in_process(document: dict, lm_url: str, n: int) -> list[float]:
    """The same program's predict in this process, no service around it."""
    import dspy

    from dspy_service.client.program import build_program

    program = build_program(document, document["program_state"])
    lm = dspy.LM("openai/local-arithmetic", api_base=lm_url, api_key="sk-bench", cache=False, num_retries=0)
    times = []
    with dspy.context(lm=lm):
        program(**QUESTION)
        for _ in range(n):
            started = time.perf_counter()
            program(**QUESTION)
            times.append((time.perf_counter() - started) * 1000)
    return times


def warm_paths(api, server, name: str, version: int, call: dict, n: int) -> tuple[dict[str, list[float]], list[float]]:
    """`n` rounds of one predict per path, the paths interleaved within each round so that
    the machine's load drifts over all of them alike: by version number, by alias, `latest`
    (all through the API), and straight to the program server."""
    paths = {
        "version": lambda: api.post(f"/programs/{name}/predict", json={"inputs": QUESTION, "version": version}),
        "alias": lambda: api.post(f"/programs/{name}/predict", json={"inputs": QUESTION, "alias": "production"}),
        "latest": lambda: api.post(f"/programs/{name}/predict", json={"inputs": QUESTION}),
        "server": lambda: server.post("/v1/predict", json=call),
    }
    warm: dict[str, list[float]] = {label: [] for label in paths}
    reported: list[float] = []
    for _ in range(n):
        for label, send in paths.items():
            elapsed, response = timed(send)
            warm[label].append(elapsed)
            if label != "server":
                reported.append(response.json()["latency_ms"])
    return warm, reported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--versions", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    lm = start_job_lm(delay_ms=args.delay_ms)
    bench = BenchStack(prefix="bench-serving-")
    bench.start()
    running = RunningStack(bench.stack, "sqlite")
    try:
        owner = f"bench-{uuid.uuid4().hex[:6]}"
        api = running.add_user(owner)
        assert api.post("/credentials", json={"name": "lm", "api_key": f"sk-{uuid.uuid4().hex}"}).status_code == 201
        body = job_payload(lm.url, rows=20, optimizer_name="labeled_few_shot", optimizer_kwargs={"k": 4})
        body.pop("username")
        body["model_config"] = {"name": "openai/local-arithmetic", "base_url": lm.url, "credential": "lm"}
        lm.set_delay(0)
        job = api.post("/run", json=body).json()["job_id"]
        assert running.wait_terminal(job, timeout=300)["status"] == "success"
        lm.set_delay(args.delay_ms)
        name = "bench-arith"
        documents = [register(running, owner, name, job) for _ in range(args.versions)]
        versions = [document["version"] for document in documents]

        cold = []
        for version in versions:
            elapsed, _ = timed(lambda v=version: api.post(f"/programs/{name}/predict",
                                                          json={"inputs": QUESTION, "version": v}))
            cold.append(elapsed)
        set_alias(running, owner, name, "production", versions[0])
        with program_server(running) as server:
            with registry_of(running):
                version_entry = asyncio.run(store_call("version", owner, name, versions[0]))
            call = {"owner": owner, "name": name, "version": versions[0], "inputs": [QUESTION],
                    "document_url": version_entry.document_url, "document_sha256": version_entry.document_sha256}
            warm, reported = warm_paths(api, server, name, versions[0], call, args.n)
            status = server.get("/v1/programs").json()["programs"]
            entry = next(p for p in status if p["version"] == versions[0])
        warm_api, warm_server = warm["version"], warm["server"]
        lm_times = lm_alone(lm.url, args.n)
        direct = in_process(documents[0], lm.url, args.n)
        memory = []
        for program in status:
            pid = program["pid"]
            helpers = []
            if bench.config.settings.sandbox == "on":  # the sandbox's init and bubblewrap above it
                init = procfs.parent_of(pid)
                helpers = [p for p in (init, procfs.parent_of(init) if init else None) if p]
            memory.append({"version": program["version"], "program_rss_mb": round(rss_mb(pid), 1),
                           "bwrap_rss_mb": round(sum(rss_mb(p) for p in helpers), 1)})
        results = {
            "delay_ms": args.delay_ms,
            "sandbox": bench.config.settings.sandbox,
            "lm_alone_ms": summarize(lm_times, 2),
            "in_process_predict_ms": summarize(direct, 2),
            "warm_api_ms": summarize(warm_api, 2),
            "warm_api_alias_ms": summarize(warm["alias"], 2),
            "warm_api_latest_ms": summarize(warm["latest"], 2),
            "warm_api_reported_ms": summarize(reported, 2),
            "warm_program_server_ms": summarize(warm_server, 2),
            "cold_first_call_ms": [round(c, 1) for c in cold],
            "memory": memory,
            "loaded": entry,
        }
    finally:
        running.stop()
        lm.close()
    print(json.dumps(results, indent=2))
    lm50 = results["lm_alone_ms"]["p50"]
    print("\n| | p50 | p99 |\n|---|---|---|")
    for label, key in (("LM alone", "lm_alone_ms"), ("in-process predict", "in_process_predict_ms"),
                       ("program server", "warm_program_server_ms"), ("API, version=1", "warm_api_ms"),
                       ("API, alias", "warm_api_alias_ms"), ("API, latest", "warm_api_latest_ms")):
        print(f"| {label} | {results[key]['p50']} ms | {results[key]['p99']} ms |")
    print(f"\nwarm p50 - LM p50 = {results['warm_api_ms']['p50'] - lm50:.1f} ms")
    for label, key in (("program server", "warm_program_server_ms"), ("API, version", "warm_api_ms"),
                       ("API, alias", "warm_api_alias_ms"), ("API, latest", "warm_api_latest_ms")):
        print(f"{label}: p50 - the LM's delay = {results[key]['p50'] - args.delay_ms:.1f} ms (target <= 20 ms)")
    print(f"cold first calls: {results['cold_first_call_ms']} ms (target <= 3000 ms)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
