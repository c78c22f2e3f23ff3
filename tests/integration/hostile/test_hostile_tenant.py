"""A hostile tenant on a real stack (SQLite and PostgreSQL), issue 13's acceptance: each
attempt the attacker's signature or metric code makes against another user fails;
nothing of the victim's reaches anything the attacker can read back; the victim's
objects are unchanged; and the attacker's job says what the sandbox denied.

The scenario (victim, attacker, the order of the jobs) is tests/support/hostile/campaign.py,
the attempts are tests/support/hostile/attacks.py: one `local` job (files, processes, the
database) and one `prefect` job (the Prefect API, our API, the network).
"""

from __future__ import annotations

import pytest

from dspy_service.result_files import decode_result_file
from tests.support.hostile.campaign import ATTACK_JOBS, CANCELLED, PENDING, all_flow_run_ids, all_variables
from tests.support.hostile.denials import assert_denials_reported, expected_denials

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOCAL = [
    "database",  # the Prefect database: the SQLite file, or PostgreSQL at 127.0.0.1:5432; Secret blocks decrypted
    "proc_environ",  # /proc/*/environ of the worker, API and Prefect server
    "list_datasets",
    "read_dataset",
    "list_results",
    "read_result",
    "list_lm_cache",
    "read_lm_cache",
    "read_lm_cache_via_socket",  # the job's own cache server asked for the victim's keys
    "read_home",  # every file of the service's home
    "write_result",  # the victim's result file, rewritten
]
PREFECT = [
    "find_auth_string",  # the Prefect server's auth string: environment, the home's file, /proc
    "find_admin_token",
    "read_run",  # the victim's parameters: the real server and our PREFECT_API_URL, with and without auth
    "list_runs",
    "read_secrets",
    "read_job_via_our_api",  # without a token, and with a token found anywhere
    "cancel_run",
    "cancel_job_via_our_api",
    "delete_run",
    "delete_job_via_our_api",
    "create_flow_run",
    "create_flow_run_with_command",  # job_variables.command
    "set_variable",
    "promote_self",  # the attacker's own user Variable, made admin
    "metadata_tcp",  # 169.254.169.254:80
    "metadata_http",  # ... over HTTP, through whatever proxy the environment names
    "prefect_port_tcp",
    "prefect_port_http",
    "database_port_tcp",  # 127.0.0.1:5432
]
ATTEMPTS = [("local", name) for name in LOCAL] + [("prefect", name) for name in PREFECT]


def test_the_attack_jobs_ran_their_code_and_failed(campaign):
    for role in ATTACK_JOBS:
        summary = campaign.summary(campaign.attacker, role)
        assert summary["status"] == "failed" and "hostile attempts:" in (summary["message"] or ""), summary


@pytest.mark.parametrize(("job", "attempt"), ATTEMPTS, ids=[f"{job}-{name}" for job, name in ATTEMPTS])
def test_the_attempt_reaches_nothing(campaign, job, attempt):
    reports = campaign.reports(job)
    message = campaign.summary(campaign.attacker, job)["message"]
    assert attempt in reports, f"the {job} job did not report {attempt!r}; its message: {message}"
    report = reports[attempt]
    assert not report["got"] and not report["found"], f"{attempt} succeeded: {report}"


def test_nothing_of_the_victims_reaches_the_attacker(campaign):
    text = campaign.attacker_readback()
    leaked = [kind for kind, value in campaign.canaries.values().items() if value in text]
    assert not leaked, f"the attacker reads back the victim's canaries {leaked}"
    settings = campaign.stack.stack.config.settings
    secrets = {"the Prefect auth string": campaign.stack.stack.prefect_auth,
               "the admin token": settings.admin_token_file.read_text().strip()}
    assert not [name for name, value in secrets.items() if value in text]


def victims_objects_changed(campaign) -> list[str]:
    """What is no longer as the victim left it (every check, so one run shows them all)."""
    stack, victim, attacker = campaign.stack, campaign.victim, campaign.attacker
    changed = []
    if campaign.victim_result.read_bytes() != campaign.victim_result_bytes:
        changed.append("the finished job's result file")
    finished = victim.client.get(f"/jobs/{victim.jobs['finished']}").json()
    stored = decode_result_file(campaign.victim_result_bytes)["optimized_test_metric"]
    if finished["status"] != "success" or finished["result"]["optimized_test_metric"] != stored:
        changed.append(f"the finished job as the API shows it: {finished['status']} {finished.get('message')} "
                       f"{(finished['result'] or {}).get('optimized_test_metric')} (was {stored})")
    for role in PENDING:
        status = victim.client.get(f"/jobs/{victim.jobs[role]}").json().get("status")
        if status != "pending":
            changed.append(f"the {role} job is {status}")
    for role in CANCELLED:
        answer = victim.client.get(f"/jobs/{victim.jobs[role]}")
        if answer.status_code != 200:
            changed.append(f"the {role} job: GET {answer.status_code}")
    if (running := campaign.summary(victim, "running"))["status"] != "success":
        changed.append(f"the running job ended {running['status']}: {running['message']}")
    if [c["api_key_last4"] for c in victim.client.get("/credentials").json()["items"]] != [campaign.canaries.key[-4:]]:
        changed.append("the credential")
    if extra := all_flow_run_ids(stack) - campaign.job_ids:
        changed.append(f"flow runs created besides the users' jobs: {sorted(extra)}")
    variables = all_variables(stack)
    if variables != campaign.variables_before:
        names = {n for n in variables.keys() | campaign.variables_before.keys()
                 if variables.get(n) != campaign.variables_before.get(n)}
        changed.append(f"Prefect Variables created or changed: {sorted(names)}")
    if attacker.client.get("/users").status_code != 403:
        changed.append("the attacker is an admin now")
    return changed


def test_the_victims_objects_are_unchanged(campaign):
    changed = victims_objects_changed(campaign)
    assert not changed, "changed: " + "; ".join(changed)


def test_the_prefect_attack_job_says_what_the_sandbox_denied(campaign):
    assert_denials_reported(campaign.logs("prefect"), expected_denials(campaign.targets["prefect"]))
