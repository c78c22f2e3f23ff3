"""The program server's HTTP app (internal: only the API calls it).

    POST /v1/predict   PredictCall -> PredictAnswer (dspy_service/program_serving.py)
    GET  /v1/usage?owner=&name=   the program's summed usage on this server
    GET  /v1/programs  the loaded programs: owner, name, version, pid, in flight, idle seconds
    GET  /health       {"status": "ok"} (no token)

Every route but /health needs `Authorization: Bearer <internal token>` (compared in
constant time); a wrong or missing one is 401. The app owns the pool (pool.py) and a
Prefect client (its credential reads, credentials.py) for its lifetime.

Errors it answers: 502 `{"detail", "kind"}` for an LM error (kind `lm`, the provider's
message with secrets scrubbed), a program error (`program`), a program that cannot be
built (`load`) or whose credential is gone (`credential`); 503 for a child that exited
under the request ("program server for NAME vN exited: killed by SIGKILL") or a sandbox
that cannot start; 504 after `program_server_timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from deployments.program_server.child import ChildExited, LoadFailed, PredictFailed, ProgramChild
from deployments.program_server.child_sandbox import SandboxUnavailable, child_environment_for
from deployments.program_server.credentials import MissingCredential, ProgramLoader
from deployments.program_server.pool import ProgramKey, ProgramPool
from deployments.program_server.usage import UsageTotals, add_usage
from dspy_service.program_serving import PREDICT_PATH, STATUS_PATH, USAGE_PATH, PredictAnswer, PredictCall
from dspy_service.program_store import CorruptDocument
from dspy_service.settings import ServiceSettings

logger = logging.getLogger("dspy_service.program_server")


class ServingError(Exception):
    def __init__(self, status: int, detail: str, kind: str | None = None):
        super().__init__(detail)
        self.status, self.detail, self.kind = status, detail, kind


def serving_error(exc: Exception) -> ServingError:
    """The answer for what the pool raised."""
    if isinstance(exc, ChildExited):
        return ServingError(503, str(exc), "exited")
    if isinstance(exc, PredictFailed):
        prefix = "LM error" if exc.kind == "lm" else "the program failed"
        return ServingError(502, f"{prefix}: {exc.message}", exc.kind)
    if isinstance(exc, LoadFailed):
        return ServingError(502, str(exc), "load")
    if isinstance(exc, MissingCredential):
        return ServingError(502, str(exc), "credential")
    if isinstance(exc, SandboxUnavailable):
        return ServingError(503, f"no sandbox for the program: {exc}", "sandbox")
    if isinstance(exc, CorruptDocument):
        return ServingError(502, str(exc), "load")
    raise exc


class ProgramService:
    """Predictions through the pool, with usage summed per program."""

    def __init__(self, pool: ProgramPool, usage: UsageTotals, timeout: float):
        self.pool = pool
        self.usage = usage
        self.timeout = timeout

    async def predict(self, call: PredictCall) -> PredictAnswer:
        key = ProgramKey(call.owner, call.name, call.version, call.document_sha256, call.document_url)
        try:
            await self.pool.child(key)  # one load, before the inputs fan out
            answers = await asyncio.wait_for(
                asyncio.gather(*(self.pool.predict(key, inputs) for inputs in call.inputs)), self.timeout
            )
        except TimeoutError:
            self.usage.record(call.owner, call.name, call.version, {}, 0, len(call.inputs))
            raise ServingError(504, f"{key.label} did not answer within {self.timeout:g} s", "timeout") from None
        except Exception as exc:  # noqa: BLE001 - mapped to its answer, or re-raised
            self.usage.record(call.owner, call.name, call.version, {}, 0, len(call.inputs))
            raise serving_error(exc) from None
        total: dict[str, Any] = {}
        for answer in answers:
            add_usage(total, answer["usage"])
        self.usage.record(call.owner, call.name, call.version, total, len(answers), 0)
        return PredictAnswer(outputs=[a["outputs"] for a in answers], usage=total)


async def service_of(request: Request) -> ProgramService:
    return request.app.state.service


Service = Annotated[ProgramService, Depends(service_of)]


def check_token(expected: str):
    async def checked(request: Request) -> None:
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(status_code=401, detail="the program server needs its internal token")

    return checked


def create_app(settings: ServiceSettings, token: str, environ: Mapping[str, str]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            def make_child(key: ProgramKey) -> ProgramChild:
                return ProgramChild(key.label, child_environment_for(settings, environ), settings)

            pool = ProgramPool(ProgramLoader(client), make_child, settings.program_server_max_programs,
                               settings.program_server_idle_seconds)
            app.state.service = ProgramService(pool, UsageTotals(), settings.program_server_timeout_seconds)
            reaper = asyncio.create_task(pool.reap_forever())
            try:
                yield
            finally:
                reaper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reaper
                await pool.close()

    app = FastAPI(title="dspy-service program server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    authorized = [Depends(check_token(token))]

    @app.exception_handler(ServingError)
    async def serving_error_answer(_: Request, exc: ServingError) -> JSONResponse:
        if exc.status >= 503:
            logger.warning("program server: %s", exc.detail)
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail, "kind": exc.kind})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(PREDICT_PATH, dependencies=authorized)
    async def predict(call: PredictCall, service: Service) -> PredictAnswer:
        return await service.predict(call)

    @app.get(USAGE_PATH, dependencies=authorized)
    async def usage(owner: str, name: str, service: Service) -> dict[str, Any]:
        return service.usage.of(owner, name)

    @app.get(STATUS_PATH, dependencies=authorized)
    async def programs(service: Service) -> dict[str, Any]:
        return {"programs": service.pool.status(), "loads": service.pool.loads}

    return app
