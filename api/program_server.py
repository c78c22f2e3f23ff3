"""The API's client of the program server (deployments/program_server/), which runs
registered programs: the API never imports or runs user code itself.

One `ProgramServerClient` per API process (created on first use), sending the internal
token (DSPY_SERVICE_PROGRAM_SERVER_TOKEN or <home>/program-server-token). Its calls raise
`ProgramServerError(status, detail)`: the server's own 502/503/504 answers passed on with
their message, 503 when the server cannot be reached, 502 for an answer that is not the
documented one (the internal token never appears in a message).
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import Request

from dspy_service.program_serving import PREDICT_PATH, USAGE_PATH, PredictAnswer, PredictCall
from dspy_service.serving_settings import program_server_token
from dspy_service.settings import ServiceSettings, get_settings

PASSED_ON = {502, 503, 504}


class ProgramServerError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class ProgramServerClient:
    def __init__(self, settings: ServiceSettings):
        self.url = settings.program_server_url
        token = program_server_token(settings, settings.home_dir)
        self.http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(settings.program_server_timeout_seconds + settings.program_start_timeout_seconds,
                                  connect=5.0),
        )

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ProgramServerError(
                503, f"the program server at {self.url} is not reachable ({type(exc).__name__}); try again shortly"
            ) from None
        if response.status_code == 200:
            return response.json()
        detail = ""
        try:
            detail = str(response.json().get("detail") or "")
        except ValueError:
            pass
        if response.status_code in PASSED_ON and detail:
            raise ProgramServerError(response.status_code, detail)
        raise ProgramServerError(502, f"the program server answered {response.status_code}")

    async def predict(self, call: PredictCall) -> PredictAnswer:
        return PredictAnswer.model_validate(await self._request("POST", PREDICT_PATH, json=call.model_dump()))

    async def usage(self, owner: str, name: str) -> dict[str, Any]:
        return await self._request("GET", USAGE_PATH, params={"owner": owner, "name": name})


async def get_program_server(request: Request) -> ProgramServerClient:
    client = getattr(request.app.state, "program_server", None)
    if client is None:
        client = request.app.state.program_server = ProgramServerClient(get_settings())
    return client
