"""One loaded program version: the process that runs user code (inside the sandbox).

    python -m deployments.program_server.child_main      (child.py starts it, in bubblewrap or not)

It reads one JSON line from stdin, `{"document", "model_config", "concurrency",
"num_retries"}` (model_config with the owner's credential merged in: handed over by the
trusted program server, never in argv, environment or logs), builds the program with
`dspy_service.client.program.build_program(document, state)` from its JSON state with any
LM stripped, answers `{"ready": true}`, then serves requests `{"id", "inputs"}` with
`{"id", "outputs", "usage"}` or `{"id", "error": {"kind": "lm" | "program", "message"}}`,
up to `concurrency` at once (threads, each prediction under `dspy.context(lm=...)` with a
fresh metered LM). Protocol lines go to the original stdout only: fd 1 is pointed at
stderr first, so what user code prints cannot corrupt them. In the sandbox
(DSPY_SERVICE_SANDBOXED) 127.0.0.1:3128, HTTP(S)_PROXY, is bridged to the egress proxy's
socket first (as sandbox_entry.py does for jobs).

How it fails: a program that cannot be built answers `{"error": ...}` and exits 3; EOF on
stdin (the server is gone) ends the process; error messages have the handed secrets
replaced by `[secret]`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

SECRET_PATTERNS = (re.compile(r"sk-[A-Za-z0-9_\-*]{6,}"), re.compile(r"(?i)bearer\s+[A-Za-z0-9._\-~+/=*]{6,}"))
LM_ERROR_MODULES = ("litellm", "openai", "httpx", "httpcore")
MAX_MESSAGE_CHARS = 2000


def scrub(text: str, secrets: list[str]) -> str:
    """`text` without the handed secrets or anything shaped like a key."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "[secret]")
    for pattern in SECRET_PATTERNS:
        text = pattern.sub("[secret]", text)
    return text[:MAX_MESSAGE_CHARS]


def strip_lms(state: dict[str, Any]) -> dict[str, Any]:
    """The program state with every predictor's saved LM removed (the server sets the LM):
    a Predict's own state is flat, a composed module's is keyed by predictor name."""
    if "signature" in state and "lm" in state:
        return {**state, "lm": None}
    return {key: ({**value, "lm": None} if isinstance(value, dict) and "lm" in value else value)
            for key, value in state.items()}


def is_lm_error(exc: BaseException) -> bool:
    """An error of the provider or the connection to it, as opposed to the program's own."""
    from dspy.utils.exceptions import LMError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, LMError) or type(seen).__module__.split(".")[0] in LM_ERROR_MODULES:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class ProgramRunner:
    """The built program and how one prediction runs."""

    def __init__(self, init: dict[str, Any]):
        import dspy

        from dspy_service.client.program import build_program
        from dspy_service.lm_usage import UsageMeter, lm_arguments
        from dspy_service.schemas import ModelConfig
        from dspy_service.secrets import secret_values

        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
        document = init["document"]
        self.program = build_program(document, strip_lms(document.get("program_state") or {}))
        config = ModelConfig.model_validate(init["model_config"])
        self.secrets = secret_values(config)
        self.lm_name = config.name
        self.lm_kwargs, self.price = lm_arguments(config, "model_config", int(init.get("num_retries", 2)))
        self.lm_kwargs["cache"] = False
        self.meter_class = UsageMeter

    def predict(self, inputs: dict[str, Any]) -> dict[str, Any]:
        import dspy

        from dspy_service.lm_usage import CountingLM

        meter = self.meter_class()
        lm = CountingLM(self.lm_name, role="main", meter=meter, price=self.price, **self.lm_kwargs)
        with dspy.context(lm=lm):
            prediction = self.program(**inputs)
        outputs = {key: jsonable(value) for key, value in prediction.items()}
        return {"outputs": outputs, "usage": meter.snapshot()["total"]}


def jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if hasattr(value, "model_dump"):
            return value.model_dump(mode="json")
        return str(value)


class ChildServer:
    """Reads requests from stdin, answers on the protocol stream, `concurrency` at once."""

    def __init__(self, runner: ProgramRunner, out: BinaryIO, concurrency: int):
        self.runner = runner
        self.out = out
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="predict")

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\n"
        with self.lock:
            self.out.write(data)
            self.out.flush()

    def handle(self, request: dict[str, Any]) -> None:
        try:
            answer = self.runner.predict(request["inputs"])
            self.send({"id": request["id"], **answer})
        except BaseException as exc:  # noqa: BLE001 - every failure is the caller's answer
            kind = "lm" if is_lm_error(exc) else "program"
            message = scrub(f"{type(exc).__name__}: {exc}", self.runner.secrets)
            self.send({"id": request["id"], "error": {"kind": kind, "message": message}})

    def serve(self, lines: BinaryIO) -> None:
        for line in lines:
            if line.strip():
                self.pool.submit(self.handle, json.loads(line))
        self.pool.shutdown(wait=False, cancel_futures=True)


def bridge_egress() -> None:
    from deployments.runtime.sandbox import EGRESS_PORT, EGRESS_SOCKET, SANDBOX_RUN_DIR
    from deployments.runtime.unix_forward import TcpToUnixForwarder

    TcpToUnixForwarder(Path(SANDBOX_RUN_DIR) / EGRESS_SOCKET, port=EGRESS_PORT).start()


def main() -> int:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what user code prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    from dspy_service.contract import SANDBOXED_ENV

    stdin = sys.stdin.buffer
    init = json.loads(stdin.readline() or b"{}")
    try:
        if os.environ.get(SANDBOXED_ENV):
            bridge_egress()
        runner = ProgramRunner(init)
    except BaseException as exc:  # noqa: BLE001 - reported to the server, then exit
        secrets = [str(v) for v in (init.get("model_config") or {}).get("extra", {}).values() if isinstance(v, str)]
        message = scrub(f"{type(exc).__name__}: {exc}", secrets)
        out.write(json.dumps({"error": {"kind": "load", "message": message}}).encode() + b"\n")
        out.flush()
        return 3
    server = ChildServer(runner, out, max(1, int(init.get("concurrency") or 1)))
    del init
    server.send({"ready": True})
    server.serve(stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
