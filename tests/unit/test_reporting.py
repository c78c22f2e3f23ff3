import httpx

from flows import reporting


class FakeClient:
    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.requests = []
        self.fallback_calls = 0
        self._client = httpx.Client(base_url="http://prefect/api", transport=httpx.MockTransport(self.answer))

    def answer(self, request):
        self.requests.append((request.method, request.url.path, request.content))
        return httpx.Response(self.statuses.pop(0) if self.statuses else 200)

    def update_flow_run_labels(self, flow_run_id, labels):
        self.fallback_calls += 1


def test_label_writes_retry_503_quickly(monkeypatch):
    monkeypatch.setattr(reporting, "QUICK_RETRY_DELAYS", (0, 0, 0))
    client = FakeClient([503, 503])
    reporting.update_labels(client, "abc", {"dspy.x": "1"})
    assert [r[:2] for r in client.requests] == [("PATCH", "/api/flow_runs/abc/labels")] * 3
    assert client.requests[-1][2] == b'{"dspy.x":"1"}'
    assert client.fallback_calls == 0


def test_label_writes_fall_back_to_prefects_client(monkeypatch):
    monkeypatch.setattr(reporting, "QUICK_RETRY_DELAYS", (0,))
    always_busy = FakeClient([503] * 5)
    reporting.update_labels(always_busy, "abc", {"a": "1"})
    assert len(always_busy.requests) == 2 and always_busy.fallback_calls == 1
    forbidden = FakeClient([403])
    reporting.update_labels(forbidden, "abc", {"a": "1"})
    assert len(forbidden.requests) == 1 and forbidden.fallback_calls == 1


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
