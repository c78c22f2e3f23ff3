"""What a cache hit from another job costs a sandboxed engine: the LM cache server's socket
(tasks/lm_cache_client.py -> deployments/runtime/lm_cache_server.py) against DSPy's own
disk cache (diskcache.FanoutCache, what the unsandboxed engine uses), for the same pickled
LiteLLM response. Only DSPy's disk layer is timed: a hit in DSPy's memory layer (a repeat
call within one job) never reaches either.

    PYTHONPATH=. .venv/bin/python bench/lm_cache_hit.py [--calls 2000] [--answer-chars 600]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

KEYS = 200


def response(chars: int) -> Any:
    import litellm

    return litellm.ModelResponse(
        model="openai/local-arithmetic",
        choices=[{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "x" * chars}}],
        usage={"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160},
    )


def timed(call: Callable[[str], Any], calls: int) -> list[float]:
    samples = []
    for index in range(calls):
        key = f"{index % KEYS:064x}"
        start = time.perf_counter()
        value = call(key)
        samples.append((time.perf_counter() - start) * 1e6)
        assert value is not None, "every timed get is a hit"
    return samples


def summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    p50, mean = statistics.median(ordered), statistics.fmean(ordered)
    return f"{name:28s} p50 {p50:8.1f} us   mean {mean:8.1f} us   p95 {p95:8.1f} us"


def main() -> None:
    from diskcache import FanoutCache

    from deployments.runtime.lm_cache_server import LmCacheServer
    from tasks.lm_cache_client import SocketDiskCache

    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--answer-chars", type=int, default=600)
    args = parser.parse_args()
    value = response(args.answer_chars)
    with tempfile.TemporaryDirectory(prefix="lmc-bench-", dir="/tmp") as raw:
        home = Path(raw)
        direct = FanoutCache(directory=str(home / "direct"), shards=16, timeout=10)  # as DSPy opens it
        server = LmCacheServer(home / "c.sock", home / "scope", max_entry_bytes=8 << 20, size_limit_bytes=1 << 30)
        server.start()
        client = SocketDiskCache(str(server.socket_path), max_entry_bytes=8 << 20)
        try:
            for index in range(KEYS):
                direct.set(f"{index:064x}", value)
                client.set(f"{index:064x}", value)
            timed(direct.get, 200), timed(client.get, 200)  # warm up
            print(summary("direct FanoutCache get", timed(direct.get, args.calls)))
            print(summary("socket server get", timed(client.get, args.calls)))
            put_direct = [_put(direct.set, value, i) for i in range(args.calls // 4)]
            put_socket = [_put(client.set, value, i) for i in range(args.calls // 4)]
            print(summary("direct FanoutCache set", put_direct))
            print(summary("socket server set", put_socket))
        finally:
            client.close()
            server.close()
            direct.close()


def _put(put: Callable[[str, Any], Any], value: Any, index: int) -> float:
    start = time.perf_counter()
    put(f"put-{index:060x}", value)
    return (time.perf_counter() - start) * 1e6


if __name__ == "__main__":
    main()
