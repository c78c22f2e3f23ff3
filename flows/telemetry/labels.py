"""Publish a job's small facts (scores, usage, progress) as labels on its flow run, and
tag the runs Prefect's scheduler creates as runs of their user and schedule.

Label keys and their encoding are the contract's (`dspy_service.contract`). Inside
`shared_label_client()` (the flow's body) the flow thread's label writes share one Prefect
client. How it fails: best effort; a label or tag that cannot be written (or a client that
cannot be opened) is logged as a warning and the job goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import Any

from dspy_service import contract
from dspy_service.prefect_http import sync_prefect_client

logger = logging.getLogger("dspy_service.labels")
# The open client of `shared_label_client()` in this context (an ExitStack that closes it).
_shared: ContextVar[dict[str, Any] | None] = ContextVar("dspy_service_label_client", default=None)


@contextmanager
def shared_label_client() -> Iterator[None]:
    """Meanwhile, label writes without a `client` in this thread share one, opened at the
    first write and closed at the end: opening one costs ~30 ms of CPU (its transport,
    Prefect's client; bench/job_cpu.py) and a job's flow thread writes labels 2-3 times."""
    shared: dict[str, Any] = {}
    token = _shared.set(shared)
    try:
        with ExitStack() as stack:
            shared["stack"] = stack
            yield
    finally:
        _shared.reset(token)


def _shared_client() -> Any:
    """The shared client of this context, opened now if needed; None outside one."""
    shared = _shared.get()
    if shared is None:
        return None
    if "client" not in shared:
        shared["client"] = shared["stack"].enter_context(sync_prefect_client())
    return shared["client"]


def publish_labels(flow_run_id: str | None, values: dict[str, Any], client: Any = None) -> None:
    """Best effort: a label that fails to reach the server must not fail the job.

    `client`: an open sync Prefect client to reuse (the live reporter keeps one). A label
    write on a SQLite-backed server often loses a race with the job's other writes and gets
    a 503, which Prefect's client retries after 2 s, then 4 s (bench/run.py measured ~2 s
    added to most jobs): open clients with `sync_prefect_client()` (quick retries first)."""
    if not flow_run_id:
        return
    labels = {key: contract.encode_label(value) for key, value in values.items() if value is not None}
    try:
        client = client if client is not None else _shared_client()
        if client is not None:
            client.update_flow_run_labels(flow_run_id, labels)
            return
        with sync_prefect_client() as own_client:
            own_client.update_flow_run_labels(flow_run_id, labels)
    except Exception as exc:  # noqa: BLE001
        logger.warning("could not update flow-run labels: %s", exc)


def mark_schedule_run(flow_run_id: str | None, username: str, schedule_id: str, notify: bool = False) -> None:
    """Runs that Prefect's scheduler creates carry only the deployment's tags: add the
    job's user and schedule tags (so /jobs?username= finds them), the notify tag when the
    job has a notify_url (so its end is delivered), and the schedule label."""
    if not flow_run_id:
        return
    publish_labels(flow_run_id, {contract.SCHEDULE_ID: schedule_id})
    try:
        with sync_prefect_client() as client:
            flow_run = client.read_flow_run(flow_run_id)
            wanted = [contract.user_tag(username), contract.schedule_tag(schedule_id)]
            if notify:
                wanted.append(contract.NOTIFY_TAG)
            missing = [tag for tag in wanted if tag not in flow_run.tags]
            if missing:
                client.update_flow_run(flow_run_id, tags=[*flow_run.tags, *missing])
    except Exception as exc:  # noqa: BLE001
        logger.warning("could not tag the flow run: %s", exc)


def champion_labels(champion: dict[str, Any] | None) -> dict[str, Any]:
    """The champion gate's decision as labels (see tasks/champion.py)."""
    if not champion:
        return {}
    return {
        contract.CHAMPION_PROMOTED: champion["promoted"],
        contract.CHAMPION_SCORE: champion.get("champion_score"),
        contract.CHAMPION_PREVIOUS: champion.get("champion_job_id"),
    }
