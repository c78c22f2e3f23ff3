"""tqdm bars as job progress: while `reporting_tqdm()` is active, every tqdm bar the job
opens also reports to its `JobProgress`.

DSPy calls `tqdm.tqdm(...)` at run time (Evaluate/ParallelExecutor, BootstrapFewShot) and
GEPA binds `tqdm` at import (`gepa.core.engine.tqdm`), so both the `tqdm` module attribute
and every module-level binding of the original class are swapped for `ReportingTqdm` for
the job's duration, and swapped back afterwards (including bindings made meanwhile).

How it fails: a bar whose report raises stays a plain tqdm bar (the error is logged at
debug level); progress must never break the optimizer.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import tqdm as tqdm_module

from dspy_service.contract import PROGRESS_LOGGER
from flows.telemetry.progress_model import JobProgress

_original_tqdm = tqdm_module.tqdm

# The job whose bars are reported (one job per process; None between jobs).
_reporting_to: JobProgress | None = None


class ReportingTqdm(_original_tqdm):
    """A tqdm bar that also reports to the job being observed; a plain tqdm bar otherwise."""

    def __init__(self, *args: Any, **kwargs: Any):
        # Bars drawn on stdout would come back as print lines of the job; draw them on the
        # stream the job's stdout capture writes through to.
        file = kwargs.get("file")
        if file is None or getattr(file, "passthrough", None) is not None:
            kwargs["file"] = getattr(file, "passthrough", None) or sys.stderr
        super().__init__(*args, **kwargs)
        self._job_progress = _reporting_to if not self.disable else None
        self._job_bar: int | None = None
        if self._job_progress is not None:
            self._job_bar = self._job_progress.open_bar(self.desc, self.total)

    def _report(self, final: bool = False) -> None:
        progress, bar_id = getattr(self, "_job_progress", None), getattr(self, "_job_bar", None)
        if progress is None or bar_id is None:
            return
        if final:
            self._job_bar = None
        try:
            elapsed = self._time() - self.start_t
            progress.update_bar(bar_id, self.n, total=self.total, desc=self.desc, elapsed=elapsed, final=final)
        except Exception:  # noqa: BLE001  progress must never break the optimizer
            logging.getLogger(PROGRESS_LOGGER).debug("progress report failed", exc_info=True)

    def update(self, n: float | None = 1) -> bool | None:
        displayed = super().update(n)
        self._report()
        return displayed

    def close(self) -> None:
        self._report(final=True)
        super().close()


def _modules_binding(cls: type) -> list[Any]:
    """Modules whose attribute `tqdm` is `cls`: the `tqdm` package itself and every
    `from tqdm import tqdm` made so far (GEPA's engine, for one)."""
    out = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        # tqdm.std defines the class: its own references must stay the original.
        if not isinstance(namespace, dict) or namespace.get("__name__") == _original_tqdm.__module__:
            continue
        if namespace.get("tqdm") is cls:
            out.append(module)
    return out


@contextmanager
def reporting_tqdm(progress: JobProgress) -> Iterator[None]:
    """Meanwhile, every tqdm bar the job opens (through `tqdm.tqdm` or a binding made by
    `from tqdm import tqdm`, before or during the job) reports to `progress`."""
    global _reporting_to
    _reporting_to = progress
    for module in _modules_binding(_original_tqdm):
        module.tqdm = ReportingTqdm
    try:
        yield
    finally:
        _reporting_to = None
        # Modules imported while the job ran bound ReportingTqdm too: restore them all.
        for module in _modules_binding(ReportingTqdm):
            module.tqdm = _original_tqdm
