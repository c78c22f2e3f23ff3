"""A job's live progress bar, drawn by tqdm's auto mode (a terminal bar, a widget in
Jupyter) from the job's event stream.

The bar runs 0-100 % of the whole job (the flow's own estimate, `job_percent` of progress
events); its description is the status and stage, optimizer phase; its postfix the best
score so far, the time left, tokens and cost. `JobProgressView` is pure (events in, bar
fields out), so what the bar shows is testable without a terminal. How it fails: an
event it does not understand leaves the fields as they were.
"""

from __future__ import annotations

from typing import Any

from dspy_service.client.sse import Event


def _clock(seconds: Any) -> str | None:
    try:
        seconds = max(0, int(float(seconds)))
    except (TypeError, ValueError):
        return None
    return (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class JobProgressView:
    """What the bar shows, from the events seen so far."""

    def __init__(self) -> None:
        self.status = "pending"
        self.stage: str | None = None
        self.phase: str | None = None
        self.percent = 0.0
        self.best_score: float | None = None
        self.remaining: str | None = None
        self.tokens: int | None = None
        self.cost: float | None = None

    def update(self, event: Event) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if event.type in ("status", "result", "error"):
            self.status = str(data.get("status") or self.status)
            if event.type == "result":
                self.percent = 100.0
        if event.type == "usage" or (event.final and isinstance(data.get("usage"), dict)):
            usage = data.get("usage", data) if event.final else data
            total = usage.get("total") if isinstance(usage.get("total"), dict) else usage
            self.tokens = total.get("total_tokens", self.tokens)
            self.cost = total.get("cost", self.cost)
        if event.type == "progress":
            metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
            self.stage = metrics.get("stage") or self.stage
            self.phase = metrics.get("tqdm_desc") or self.phase
            if isinstance(metrics.get("job_percent"), (int, float)):
                self.percent = max(self.percent, float(metrics["job_percent"]))
            if isinstance(metrics.get("best_score"), (int, float)):
                self.best_score = float(metrics["best_score"])
            self.remaining = _clock(metrics.get("job_remaining")) or self.remaining

    def description(self) -> str:
        parts = [self.status]
        if self.status == "running" and self.stage:
            parts.append(self.stage)
        if self.status == "running" and self.phase:
            parts.append(self.phase[:40])
        return " | ".join(parts)

    def postfix(self) -> dict[str, str]:
        shown: dict[str, str] = {}
        if self.best_score is not None:
            shown["best"] = f"{self.best_score:.3g}"
        if self.remaining and self.status == "running":
            shown["eta"] = self.remaining
        if self.tokens is not None:
            shown["tokens"] = f"{self.tokens:,}"
        if self.cost:
            shown["cost"] = f"${self.cost:.4f}"
        return shown


class JobProgressBar:
    """The tqdm bar of one job; `update(event)` redraws it, `close()` ends it."""

    def __init__(self, job_id: str, file: Any = None):
        from tqdm.auto import tqdm

        self.view = JobProgressView()
        self.bar = tqdm(
            total=100,
            desc=f"job {job_id[:8]}",
            unit="%",
            file=file,
            dynamic_ncols=True,
            bar_format="{desc}{percentage:3.0f}%|{bar}| {elapsed}{postfix}",  # tqdm ends a set desc with ": "
        )
        self.job_id = job_id

    def update(self, event: Event) -> None:
        self.view.update(event)
        self.bar.set_description(f"job {self.job_id[:8]} {self.view.description()}", refresh=False)
        self.bar.set_postfix(self.view.postfix(), refresh=False)
        self.bar.n = round(self.view.percent, 1)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
