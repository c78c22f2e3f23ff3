"""The Prefect clients jobs and the API open: 503 answers are retried quickly, then handed back."""

import httpx


def test_job_client_transport_retries_503_quickly():
    from dspy_service.prefect_http import QuickRetrySyncTransport

    statuses = [503, 503, 200]
    seen = []

    def answer(request):
        seen.append((request.method, request.url.path, request.content))
        return httpx.Response(statuses.pop(0))

    transport = QuickRetrySyncTransport(httpx.MockTransport(answer), delays=(0, 0, 0))
    with httpx.Client(transport=transport, base_url="http://prefect/api") as client:
        assert client.patch("/flow_runs/abc/labels", json={"dspy.x": "1"}).status_code == 200
    assert seen == [("PATCH", "/api/flow_runs/abc/labels", b'{"dspy.x":"1"}')] * 3

    # Out of quick retries, or any other error: the answer goes back to Prefect's client.
    statuses[:] = [503] * 5 + [403]
    seen.clear()
    with httpx.Client(transport=QuickRetrySyncTransport(httpx.MockTransport(answer), delays=(0,))) as client:
        assert client.get("http://prefect/api/x").status_code == 503 and len(seen) == 2
        seen.clear()
        statuses[:] = [403]
        assert client.get("http://prefect/api/x").status_code == 403 and len(seen) == 1


def test_job_clients_use_the_quick_retry_transport():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from dspy_service.prefect_http import QuickRetrySyncTransport, sync_prefect_client

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}), sync_prefect_client() as client:
        assert isinstance(client._client._transport, QuickRetrySyncTransport)


def test_api_client_transport_retries_503_quickly():
    import asyncio

    from dspy_service.prefect_http import QuickRetryTransport

    statuses = [503, 503, 201]
    seen = []

    def answer(request):
        seen.append(request.content)
        return httpx.Response(statuses.pop(0))

    async def go():
        transport = QuickRetryTransport(httpx.MockTransport(answer), delays=(0, 0, 0))
        async with httpx.AsyncClient(transport=transport, base_url="http://prefect/api") as client:
            return await client.post("/flow_runs/", json={"a": 1})

    assert asyncio.run(go()).status_code == 201
    assert seen == [b'{"a":1}'] * 3

    statuses[:] = [503] * 5
    seen.clear()

    async def give_up():
        transport = QuickRetryTransport(httpx.MockTransport(answer), delays=(0,))
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get("http://prefect/api/x")

    assert asyncio.run(give_up()).status_code == 503 and len(seen) == 2
