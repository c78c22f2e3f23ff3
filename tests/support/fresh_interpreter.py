"""Run a function in a fresh, single-threaded interpreter and get its return value back.

The forked-engine starter refuses to fork a process with more than one thread (a fork
copies locks other threads may hold). The test process is not such a process once a
session fixture (the local LM's server thread, a stack's clients) has started threads,
so tests of code that forks run that code here. `func` and its arguments must be
importable/picklable (module-level functions); an exception in the child is raised again
in the caller.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def in_fresh_interpreter(func: Callable[..., Any], *args: Any) -> Any:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(func, args)
