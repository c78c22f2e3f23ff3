"""Registering a stack's finished job as a program version from the test (or bench)
process, as POST /programs does: the store (dspy_service/program_store.py) on the stack's
Prefect server and shared storage, the document built from the job's spec and JSON result."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import httpx

from dspy_service.program_documents import build_document
from dspy_service.result_files import decode_result_file
from dspy_service.schemas import JobSpec
from tests.support.result_storage import stored_result_path
from tests.support.stack import prefect_settings


@contextlib.contextmanager
def registry_of(stack: Any):
    """This process's settings and Prefect client pointed at the stack (a RunningStack)."""
    from dspy_service.settings import get_settings

    previous = os.environ.get("DSPY_SERVICE_STORAGE_URL")
    os.environ["DSPY_SERVICE_STORAGE_URL"] = stack.stack.config.settings.resolved_storage_url
    get_settings.cache_clear()
    try:
        with prefect_settings(stack.stack):
            yield
    finally:
        if previous is None:
            os.environ.pop("DSPY_SERVICE_STORAGE_URL", None)
        else:
            os.environ["DSPY_SERVICE_STORAGE_URL"] = previous
        get_settings.cache_clear()


async def store_call(method: str, *args: Any) -> Any:
    from prefect.client.orchestration import get_client

    from dspy_service.program_store import ProgramStore

    async with get_client() as client:
        return await getattr(ProgramStore(client), method)(*args)


def register(stack: Any, owner: str, name: str, job_id: str) -> dict[str, Any]:
    """Register the finished job as the next version of `name`: its document, with `version`."""
    run = stack.flow_run(job_id)
    result = decode_result_file(stored_result_path(stack, job_id).read_bytes())
    document = build_document(JobSpec.model_validate(run["parameters"]["job"]), result)
    with registry_of(stack):
        entry = asyncio.run(store_call("register", owner, name, job_id, document))
    return {**document, "version": entry.version}


def set_alias(stack: Any, owner: str, name: str, alias: str, version: int) -> None:
    with registry_of(stack):
        asyncio.run(store_call("set_alias", owner, name, alias, version))


def program_server(stack: Any) -> httpx.Client:
    """A client of the stack's program server, with its internal token."""
    settings = stack.stack.config.settings
    token = settings.program_server_token_file(settings.home_dir).read_text().strip()
    return httpx.Client(base_url=stack.stack.config.program_server_url, timeout=60,
                        headers={"Authorization": f"Bearer {token}"})
