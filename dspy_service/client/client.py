"""The Python client of dspy-service: `Client` (sync) and `AsyncClient` (asyncio).

    from dspy_service.client import Client
    client = Client()                     # DSPY_SERVICE_URL / DSPY_SERVICE_TOKEN, or a local `up`
    job = client.optimize(dspy.ChainOfThought(QA), metric, trainset=df, model=dspy.LM(...),
                          optimizer="bootstrap", wait=True)
    program = job.program()               # a ready dspy.Module

It talks HTTP only and imports neither Prefect nor the API. How it fails: see errors.py
(the API's field and message travel in the exception) and payload.py (ValueError for
objects that cannot be sent, raised before any request).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from dspy_service.client.async_jobs import AsyncJob
from dspy_service.client.connection import AsyncConnection, Connection
from dspy_service.client.errors import Conflict
from dspy_service.client.jobs import Job
from dspy_service.client.payload import optimize_body
from dspy_service.client.programs import Programs

PAGE_SIZE = 100
# `optimize`'s keyword arguments that shape the body (the others are raw POST /run fields).
OPTIMIZE_FIELDS = ("optimizer", "optimizer_kwargs", "valset", "testset", "model", "reflection_model", "split",
                   "seed", "name")


def _job_list_params(status: str | None, username: str | None, limit: int, offset: int) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status:
        params["status"] = status
    if username:
        params["username"] = username
    return params


class Client:
    """A session with the service; use as a context manager or call `close()`."""

    def __init__(self, base_url: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.connection = Connection(base_url, token, timeout)

    @property
    def base_url(self) -> str:
        return self.connection.base_url

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.connection.close()

    def get(self, path: str, **params: Any) -> Any:
        """GET any endpoint of the API; its JSON."""
        return self.connection.request("GET", path, params=params or None)

    @property
    def programs(self) -> Programs:
        """The program registry: register, list, get, info, aliases, delete, export."""
        return Programs(self.connection)

    # ---- jobs -----------------------------------------------------------------------------
    def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> Job:
        """POST /run with a raw contract body."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        answer = self.connection.request("POST", "/run", json=body, headers=headers)
        return Job(self.connection, answer["job_id"], answer)

    def estimate(self, body: dict[str, Any] | Any, metric: Callable | None = None, trainset: Any = None,
                 **options: Any) -> dict[str, Any]:
        """POST /run/estimate: LM calls, tokens and dollars (low / typical / ceiling) per
        stage; nothing runs and no LM is called. Give a raw contract body (as `submit`
        takes), or `optimize`'s arguments (program, metric, trainset, optimizer=..., ...)."""
        if metric is not None:
            body = self._optimize_body(body, metric, trainset, **options)
        return self.connection.request("POST", "/run/estimate", json=body)

    def optimize(
        self,
        program: Any,
        metric: Callable,
        trainset: Any,
        *,
        optimizer: str = "miprov2",
        optimizer_kwargs: dict[str, Any] | None = None,
        valset: Any = None,
        testset: Any = None,
        model: Any = None,
        reflection_model: Any = None,
        split: dict[str, float] | None = None,
        seed: int | None = None,
        name: str | None = None,
        wait: bool = False,
        progress: bool = True,
        **raw: Any,
    ) -> Job:
        """Optimize a DSPy module (dspy.Predict / dspy.ChainOfThought) with `metric` on `trainset`.

        `trainset` (and `valset`, `testset`): dspy.Example objects, dicts or a DataFrame whose
        columns are named like the signature's fields. Without valset/testset the service
        splits the rows by `split` ({train, val, test} fractions). `model` and
        `reflection_model`: a LiteLLM model id, a dspy.LM (its api key is kept as one of your
        credentials, never sent in the job) or a model_config dict. Other keyword arguments
        are POST /run fields and win over what is derived. `wait` follows the job to its end.
        """
        body = self._optimize_body(
            program, metric, trainset, optimizer=optimizer, optimizer_kwargs=optimizer_kwargs, valset=valset,
            testset=testset, model=model, reflection_model=reflection_model, split=split, seed=seed, name=name, **raw,
        )
        job = self.submit(body)
        if wait:
            job.wait(progress=progress)
        return job

    def _optimize_body(self, program: Any, metric: Callable, trainset: Any, **options: Any) -> dict[str, Any]:
        """The POST /run body of `optimize`'s arguments (a dspy.LM's key stored first)."""
        named = {field: options.pop(field, None) for field in OPTIMIZE_FIELDS}
        named["optimizer"] = named["optimizer"] or "miprov2"
        return optimize_body(program, metric, trainset, store_key=self.store_credential, raw=options, **named)

    def job(self, job_id: str) -> Job:
        """The job with this id (404 NotFound if it is not yours or does not exist)."""
        return Job(self.connection, job_id, self.connection.request("GET", f"/jobs/{job_id}/summary"))

    def jobs(self, status: str | None = None, username: str | None = None, limit: int | None = None) -> Iterator[Job]:
        """Your jobs, newest first, fetched a page at a time; at most `limit` of them."""
        offset, seen = 0, 0
        while limit is None or seen < limit:
            size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - seen)
            page = self.connection.request("GET", "/jobs", params=_job_list_params(status, username, size, offset))
            for item in page["items"]:
                seen += 1
                yield Job(self.connection, item["job_id"], item)
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def store_credential(self, name: str, api_key: str) -> None:
        """Keep `api_key` as your credential `name` (a name in use already is kept as it is:
        the client names credentials by a hash of the key)."""
        try:
            self.connection.request("POST", "/credentials", json={"name": name, "api_key": api_key})
        except Conflict:
            pass


class AsyncClient:
    """The asyncio twin of `Client`: the same methods, awaited (`jobs` is an async iterator)."""

    def __init__(self, base_url: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.connection = AsyncConnection(base_url, token, timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.connection.close()

    async def get(self, path: str, **params: Any) -> Any:
        return await self.connection.request("GET", path, params=params or None)

    async def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> AsyncJob:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        answer = await self.connection.request("POST", "/run", json=body, headers=headers)
        return AsyncJob(self.connection, answer["job_id"], answer)

    async def estimate(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.connection.request("POST", "/run/estimate", json=body)

    async def optimize(
        self, program: Any, metric: Callable, trainset: Any, *, wait: bool = False, **options: Any
    ) -> AsyncJob:
        """See `Client.optimize`; the api key of a dspy.LM is stored before the job is sent."""
        keys: list[tuple[str, str]] = []
        named = {field: options.pop(field, None) for field in OPTIMIZE_FIELDS}
        named["optimizer"] = named["optimizer"] or "miprov2"
        progress = options.pop("progress", True)
        body = optimize_body(
            program, metric, trainset, store_key=lambda n, k: keys.append((n, k)), raw=options, **named
        )
        for name, key in keys:
            await self.store_credential(name, key)
        job = await self.submit(body)
        if wait:
            await job.wait(progress=progress)
        return job

    async def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self.connection, job_id, await self.connection.request("GET", f"/jobs/{job_id}/summary"))

    async def jobs(
        self, status: str | None = None, username: str | None = None, limit: int | None = None
    ) -> AsyncIterator[AsyncJob]:
        offset, seen = 0, 0
        while limit is None or seen < limit:
            size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - seen)
            params = _job_list_params(status, username, size, offset)
            page = await self.connection.request("GET", "/jobs", params=params)
            for item in page["items"]:
                seen += 1
                yield AsyncJob(self.connection, item["job_id"], item)
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    async def store_credential(self, name: str, api_key: str) -> None:
        try:
            await self.connection.request("POST", "/credentials", json={"name": name, "api_key": api_key})
        except Conflict:
            pass
