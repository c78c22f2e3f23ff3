"""The program server's handle on one loaded program version's process (child_main.py).

`ProgramChild.start` prepares the child's environment (child_sandbox.py: bubblewrap and
the egress proxy, or a plain subprocess), starts the process, hands it the document and
the model config with its secrets over stdin, and waits for `{"ready": true}`. `predict`
sends one request and awaits its answer; at most `concurrency` requests are in flight
(the child runs as many threads), the others wait here. A reader task matches answers to
requests by id.

How it fails: `LoadFailed` (the program cannot be built, or the process did not get ready
within the start timeout: the process is killed); `ChildExited` for every request in
flight when the process ends, with the reason ("exit code 1", "killed by
SIGKILL"); `PredictFailed(kind, message)` for an error the child reported (`lm`: the
provider's, secrets scrubbed; `program`: the program's own). `close` kills the process's
whole session and never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import time
from typing import Any

from deployments.program_server.child_sandbox import ChildSandbox, PlainChild, confiner
from deployments.runtime.job_sandbox import engine_process
from dspy_service.schemas import ModelConfig
from dspy_service.settings import ServiceSettings

LINE_LIMIT = 64 * 1024 * 1024


class ChildError(Exception):
    """A request the child could not answer."""


class LoadFailed(ChildError):
    pass


class ChildExited(ChildError):
    pass


class PredictFailed(ChildError):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


def exit_reason(code: int | None, sandboxed: bool) -> str:
    """How a child's exit reads for a user: `killed by SIGKILL`, `exit code 3`."""
    if code is None:
        return "gone"
    if sandboxed and code > 128 and code - 128 < signal.NSIG:
        code = 128 - code  # bubblewrap exits 128 + N when signal N killed what it ran
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ProgramChild:
    """One process serving one (owner, program, version)."""

    def __init__(self, label: str, environment: PlainChild | ChildSandbox, settings: ServiceSettings):
        self.label = label  # "name v3": what messages call it
        self.environment = environment
        self.settings = settings
        self.concurrency = settings.program_server_concurrency
        self.semaphore = asyncio.Semaphore(self.concurrency)
        self.process: asyncio.subprocess.Process | None = None
        self.pid: int | None = None  # the process running the program (inside bubblewrap when sandboxed)
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count(1)
        self.reader: asyncio.Task | None = None
        self.exit_reason: str | None = None
        self.last_used = time.monotonic()
        self.in_flight = 0
        self.started_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.exit_reason is None

    async def start(self, document: dict[str, Any], model_config: dict[str, Any]) -> None:
        try:
            self.environment.prepare(self.label.replace(" ", "-"), ModelConfig.model_validate(model_config))
            argv, env = self.environment.command()
            self.process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
                start_new_session=True, preexec_fn=confiner(self.settings), limit=LINE_LIMIT,
            )
        except BaseException:
            self.environment.close()  # no proxy thread or directory left behind
            raise
        init = {"document": document, "model_config": model_config, "concurrency": self.concurrency,
                "num_retries": self.settings.lm_num_retries}
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(init).encode() + b"\n")
            await self.process.stdin.drain()
            line = await asyncio.wait_for(self.process.stdout.readline(), self.settings.program_start_timeout_seconds)
        except (TimeoutError, ConnectionError) as exc:
            await self.close()
            raise LoadFailed(f"program server for {self.label} did not start: {type(exc).__name__}") from None
        del init
        answer = json.loads(line) if line.strip() else {}
        if not answer.get("ready"):
            code = await self._wait_exit()
            await self.close()
            reason = f"its process exited: {exit_reason(code, self.sandboxed)}"
            message = (answer.get("error") or {}).get("message") or reason
            raise LoadFailed(f"program {self.label} cannot be loaded: {message}")
        self.pid = await asyncio.to_thread(engine_process, self.process.pid) if self.sandboxed else self.process.pid
        self.reader = asyncio.create_task(self._read())

    @property
    def sandboxed(self) -> bool:
        return self.environment.sandboxed

    async def _wait_exit(self) -> int | None:
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            return None

    async def predict(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """{"outputs", "usage"} of one prediction."""
        async with self.semaphore:
            if not self.alive:
                raise ChildExited(f"program server for {self.label} exited: {self.exit_reason or 'not running'}")
            assert self.process is not None and self.process.stdin is not None
            request_id = next(self.ids)
            future: asyncio.Future = asyncio.get_running_loop().create_future()
            self.pending[request_id] = future
            self.in_flight += 1
            try:
                self.process.stdin.write(json.dumps({"id": request_id, "inputs": inputs}).encode() + b"\n")
                await self.process.stdin.drain()
                answer = await future
            except ConnectionError:
                await self._finished()
                raise ChildExited(f"program server for {self.label} exited: {self.exit_reason}") from None
            finally:
                self.pending.pop(request_id, None)
                self.in_flight -= 1
                self.last_used = time.monotonic()
        if "error" in answer:
            raise PredictFailed(answer["error"].get("kind", "program"), answer["error"].get("message", ""))
        return {"outputs": answer.get("outputs") or {}, "usage": answer.get("usage") or {}}

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with contextlib.suppress(ValueError, ConnectionError):  # a line over the limit ends the child
            while line := await self.process.stdout.readline():
                with contextlib.suppress(ValueError):
                    answer = json.loads(line)
                    future = self.pending.get(answer.get("id"))
                    if future is not None and not future.done():
                        future.set_result(answer)
        await self._finished()

    async def _finished(self) -> None:
        """The process ended: every request in flight gets ChildExited with the reason."""
        if self.exit_reason is None:
            code = await self._wait_exit()
            self.exit_reason = exit_reason(code, self.sandboxed)
        error = ChildExited(f"program server for {self.label} exited: {self.exit_reason}")
        for future in list(self.pending.values()):
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 5)
        if self.exit_reason is None:
            self.exit_reason = "was closed"
        for future in list(self.pending.values()):
            if not future.done():
                future.set_exception(ChildExited(f"program server for {self.label} was closed"))
        if self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel()
        self.environment.close()
