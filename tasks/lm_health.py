"""Is the job's LM there? A check at job start and a circuit breaker during the job.

At start, `check_endpoints` sends one request that costs no tokens (GET `<base_url>/models`)
to each configured `base_url`: any HTTP answer means the endpoint is there; a refused or
timed-out connection (directly, or as the sandbox's egress proxy reports it: 502 "cannot
connect", 504) fails the job at once with `LMUnreachable`, naming the endpoint.

During the job, one `EndpointBreaker` per job, shared by all its LMs and threads, counts
consecutive calls that failed at the connection level (DSPy's `LMTransportError`). After
the first such failure the next calls are sent without DSPy's retries (each retry waits
1, 2, 4, 8, 16 s), and after `lm_unreachable_calls` of them in a row the breaker opens:
every further call raises `LMUnreachable` at once, and the flow fails the job with its
message ("LM endpoint http://… unreachable: connection refused (8 calls)"). Any
successful call closes it again.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import httpx

from dspy_service.errors import JobError
from dspy_service.tls import default_ssl_context

CHECK_TIMEOUT_SECONDS = 5.0


class LMUnreachable(JobError):
    """The job's LM endpoint does not answer; the message names it and how often it failed."""


# What the sandbox's egress proxy answers (502) for a target it cannot connect to
# (deployments/runtime/egress_proxy.py): DSPy reports that as a server error.
EGRESS_CANNOT_CONNECT = "cannot connect to"


def is_connection_failure(exc: BaseException) -> bool:
    """A failure to reach the endpoint at all (not an error the LM answered with)."""
    from dspy.utils.exceptions import LMTransportError

    return isinstance(exc, (LMTransportError, httpx.TransportError)) or EGRESS_CANNOT_CONNECT in str(exc)


def reason_of(exc: BaseException) -> str:
    text = str(exc).lower()
    # asyncio says "Connect call failed" for ECONNREFUSED (the egress proxy's words).
    if "refused" in text or "errno 111" in text or "connect call failed" in text:
        return "connection refused"
    if "timed out" in text or "timeout" in text:
        return "connection timed out"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "host not found"
    return (" ".join(str(exc).split(": ", 1)[-1].split()) or type(exc).__name__)[:200]


def shown_endpoint(url: str) -> str:
    """The endpoint without credentials or query (a base_url may carry either)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class EndpointBreaker:
    """Consecutive connection-level failures of a job's LM calls, across threads."""

    def __init__(self, threshold: int):
        self.threshold = threshold
        self._lock = threading.Lock()
        self.failures = 0
        self.endpoint = ""
        self.reason = ""

    def __deepcopy__(self, memo: dict) -> EndpointBreaker:  # DSPy copies LMs per thread: one breaker per job
        return self

    @property
    def suspect(self) -> bool:
        """A call just failed to connect: send the next ones without retries."""
        return self.failures > 0

    @property
    def open(self) -> bool:
        return self.failures >= self.threshold

    def message(self) -> str:
        return f"LM endpoint {self.endpoint} unreachable: {self.reason} ({self.failures} calls)"

    def check(self) -> None:
        if self.open:
            raise LMUnreachable(self.message())

    def failed(self, endpoint: str, exc: BaseException) -> None:
        with self._lock:
            # Once open the count stops: calls that were in flight when it opened fail too, and
            # the job's message names the calls that opened it, whichever thread raises it.
            if self.open:
                return
            self.failures += 1
            self.endpoint, self.reason = shown_endpoint(endpoint), reason_of(exc)

    def succeeded(self) -> None:
        with self._lock:
            self.failures = 0


def endpoint_problem(base_url: str, timeout: float = CHECK_TIMEOUT_SECONDS) -> str | None:
    """Why `base_url` cannot be reached (None: it answered). The request goes where the
    job's LM calls go: through the sandbox's egress proxy when one is set."""
    url = base_url.rstrip("/") + "/models"
    try:
        with httpx.Client(
            timeout=timeout, trust_env=True, follow_redirects=False, verify=default_ssl_context()
        ) as client:
            answer = client.get(url)
    except httpx.TransportError as exc:
        return reason_of(exc)
    # The egress proxy answers for a target it could not reach (deployments/runtime/egress_proxy.py).
    if answer.status_code == 502 and EGRESS_CANNOT_CONNECT in answer.text:
        return reason_of(Exception(answer.text))
    if answer.status_code == 504 and "did not answer" in answer.text:
        return "connection timed out"
    return None


def check_endpoints(endpoints: dict[str, str]) -> None:
    """`endpoints`: field name -> base_url. LMUnreachable for the first that does not answer."""
    for field, base_url in endpoints.items():
        problem = endpoint_problem(base_url)
        if problem:
            raise LMUnreachable(
                f"LM endpoint {shown_endpoint(base_url)} unreachable: {problem} (checked at job start; {field})",
                field=field,
            )
