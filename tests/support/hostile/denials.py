"""What the sandbox tells a user about a denied request: the one place this suite expects it.

The supervisor's proxies (the job-scoped Prefect proxy and the egress proxy) write a line
to the job's log for every request they refuse, starting with `SANDBOX_DENIAL_PREFIX`
(e.g. "sandbox: denied POST /api/flow_runs/filter (not this job's run)"). Adjust the
prefix and `expected_denials` here if the proxies' wording changes.
"""

from __future__ import annotations

from typing import Any

SANDBOX_DENIAL_PREFIX = "sandbox: denied"


def sandbox_denials(logs: list[dict]) -> list[str]:
    """The denial lines among a job's log entries (GET /jobs/{id}/logs)."""
    return [entry["message"] for entry in logs if entry["message"].startswith(SANDBOX_DENIAL_PREFIX)]


def expected_denials(targets: dict[str, Any]) -> list[tuple[str, ...]]:
    """What the `prefect` attack job (attacks.run_prefect, told `targets`) must see denied:
    each entry's words all appear in one denial line. Requests to the job's own Prefect
    URL reach the Prefect proxy; plain-HTTP requests elsewhere go through the egress proxy."""
    runs = targets["runs"]
    return [
        ("GET", f"/flow_runs/{runs['read']}"),
        ("POST", "/flow_runs/filter"),
        ("POST", "/block_documents/filter"),
        ("POST", f"/flow_runs/{runs['cancel']}/set_state"),
        ("DELETE", f"/flow_runs/{runs['delete']}"),
        ("POST", f"/deployments/{targets['deployment_id']}/create_flow_run"),
        ("POST", "/flow_runs/"),
        ("POST", "/variables/"),
        ("GET", f"/variables/name/{targets['user_variable']}"),
        ("169.254.169.254",),
        (f"127.0.0.1:{targets['prefect_port']}",),
        (targets["api_url"].removeprefix("http://"),),  # our API: the egress proxy's loopback
    ]


def assert_denials_reported(logs: list[dict], expected: list[tuple[str, ...]]) -> None:
    denials = sandbox_denials(logs)
    missing = [words for words in expected if not any(all(w in line for w in words) for line in denials)]
    assert not missing, f"no '{SANDBOX_DENIAL_PREFIX} ...' log line for {missing}; the job's denials: {denials[:30]}"
