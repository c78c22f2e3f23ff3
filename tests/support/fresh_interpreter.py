"""Run a function in a fresh, single-threaded interpreter and get its return value back.

The forked-engine starter refuses to fork a process with more than one thread (a fork
copies locks other threads may hold). The test process is not such a process once a
session fixture (the local LM's server thread, a stack's clients) has started threads,
so tests of code that forks run that code here. `func` and its arguments must be
importable/picklable (module-level functions); an exception in the child is raised again
in the caller.

The pool's worker is told to stop with SIGTERM when the pool closes. Code under test (the
job supervisor) installs its own SIGTERM/SIGINT handlers, which would outlive the call and
turn that SIGTERM into a cooperative stop request of a job that has already ended: the
worker would never exit and the test would hang in the pool's join. `_call` restores the
default handlers after every call.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from typing import Any


def _call(func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    try:
        return func(*args)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def in_fresh_interpreter(func: Callable[..., Any], *args: Any) -> Any:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_call, (func, args))
