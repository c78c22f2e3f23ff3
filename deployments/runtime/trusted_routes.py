"""The job-scoped Prefect proxy's own routes: what a sandboxed job asks the trusted side to do.

The proxy (prefect_proxy.py) answers these itself instead of forwarding them, after the
job's scope allowed the request (prefect_scope.py: runs of a schedule only; registration
only while the job holds its schedule's champion lock):

- `GET /api/dspy-service/champion-result` (`champion_result`): the champion pointer and
  run are read upstream and the run's result is read here with the JSON-only reader
  (dspy_service/champion_runs.py), because a sandbox can read no other job's result file;
- `POST /api/dspy-service/champion-registration` (`champion_registration`): the job's
  promoted run is registered as its schedule's `register_as` says, here, because a sandbox
  can write neither Prefect Variables nor the shared storage. The job sends only its own
  program; which run (its own), program, alias and owner is decided here from Prefect
  (dspy_service/schedule_registration.py).

Both return (status, JSON body) and never raise: 422 {detail} for a refusal the job
reports as such, 502 {detail} when the upstream or the storage fails (the engine's
client retries; registration is idempotent per run).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from dspy_service.contract import champion_variable

logger = logging.getLogger("dspy_service.prefect_proxy")


async def champion_result(
    client: httpx.AsyncClient, upstream_url: Callable[[str], str], schedule_id: str
) -> tuple[int, dict[str, Any]]:
    """(status, body): 200 {job_id, run, result}; 404 without a champion; 422 {job_id,
    detail} when the champion is refused (another schedule's run, not completed, ...);
    502 when the upstream fails (the engine's client retries, then the gate gives up)."""
    from dspy_service.champion_runs import (
        ChampionUnloadable,
        champion_run_id,
        check_champion_run,
        read_champion_result,
    )

    pointer = upstream_url(f"/api/variables/name/{champion_variable(schedule_id)}")
    try:
        variable = await client.get(pointer)
        if variable.status_code != 404:
            variable.raise_for_status()
        value = variable.json().get("value") if variable.status_code == 200 else None
        if not isinstance(value, dict) or not value.get("job_id"):
            return 404, {"detail": f"schedule {schedule_id} has no champion"}
        job_id = str(value["job_id"])
        try:
            response = await client.get(upstream_url(f"/api/flow_runs/{champion_run_id(job_id)}"))
            if response.status_code != 404:
                response.raise_for_status()
            run = check_champion_run(response.json() if response.status_code == 200 else None, schedule_id)
            return 200, {"job_id": job_id, "run": run, "result": await read_champion_result(run)}
        except ChampionUnloadable as exc:
            return 422, {"job_id": job_id, "detail": str(exc)}
    except (httpx.HTTPError, ValueError) as exc:
        return 502, {"detail": f"sandbox: the champion could not be read ({type(exc).__name__})"}


async def champion_registration(
    upstream_api_url: str, upstream_headers: Mapping[str, str], flow_run_id: str, body: bytes | None
) -> tuple[int, dict[str, Any]]:
    """(status, body): 200 {registered: {program, version, alias} | null, reason}; 422
    {detail} when refused; 502 {detail} when Prefect or the storage fails."""
    from prefect.client.orchestration import PrefectClient

    from dspy_service.program_store import ProgramStoreError
    from dspy_service.schedule_registration import RegistrationRefused, register_promoted_run

    try:
        program = json.loads(body or b"null")
        async with PrefectClient(upstream_api_url, httpx_settings={"headers": dict(upstream_headers)}) as client:
            registered, reason = await register_promoted_run(client, flow_run_id, program)
    except (RegistrationRefused, ProgramStoreError, ValueError) as exc:
        return 422, {"detail": str(exc)}
    except Exception as exc:  # noqa: BLE001 - Prefect or the storage failed: the job reports it, never a crash here
        logger.exception("registering run %s failed", flow_run_id)
        return 502, {"detail": f"sandbox: the run could not be registered ({type(exc).__name__}: {exc})"}
    return 200, {"registered": registered, "reason": reason}
