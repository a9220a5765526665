"""HTTP for the fal client: one deadline per image, streamed and size-capped answers, careful retries.

Every exchange is streamed under a Watch (watchdog.py): its whole answer, headers and body, must
arrive before the image's deadline, and stopping (Ctrl-C, another image failing) ends it within a
fraction of a second; the body is read in chunks and refused past a size cap.

Retried, after `Retry-After` seconds when fal sends it, else exponential backoff with jitter:
- requests that can be repeated without harm (status, result, cancel, storage, downloads):
  HTTP 429, HTTP 5xx, connection errors and read timeouts;
- the submit, which creates a billed job, only where fal surely did not take it: a connection
  that was never made, HTTP 429, and HTTP 502/503/504 from fal's edge proxy, told apart from fal's
  own servers by the absence of the `x-fal-request-id` header (the test fal_client's
  `_is_ingress_error` makes; it also looks for "nginx" in the body, which we do not need).
Never retried: any other 4xx, because sending the same request again cannot change fal's answer.
The key goes only into the Authorization header, and only to the configured origin (origin.py).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import requests
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import ProxyError as UrllibProxyError

from .errors import FalError, http_error, malformed, too_large
from .origin import Origin, check_same_origin
from .redact import excerpt, redact
from .watchdog import Watchdog

logger = logging.getLogger(__name__)

CONNECT_SECONDS = 5.0  # a TCP connect cannot be cut, so this also bounds how long Ctrl-C may wait
SUBMIT_STOP_GRACE = 3.0  # seconds a submit's answer may still take after a stop: it names the job to cancel
CHUNK_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 8 * 2**20  # a status or submit answer; results and images get a cap from their size
EDGE_ERRORS = (502, 503, 504)
REQUEST_ID_HEADER = "x-fal-request-id"  # set by fal's own servers, absent from its edge proxy's errors
# requests' errors that a new attempt may not meet; others (a bad URL, too many redirects) would recur.
TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
             requests.exceptions.ContentDecodingError)

# Builds the error for a final non-2xx answer: (status, body, action=, attempts=, key=) -> FalError.
ErrorBuilder = Callable[..., FalError]


class Stopped(Exception):
    """Internal signal: the run was interrupted, or another image of the batch failed."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry; `attempts` counts the first try."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    jitter: float = 0.5  # the backoff is multiplied by a random factor in [1 - jitter, 1 + jitter]

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return retry_after
        backoff = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
        return backoff * random.uniform(1 - self.jitter, 1 + self.jitter)


class Budget:
    """The time one image's request may take overall, and the event that stops it early."""

    def __init__(self, timeout: float, stop: threading.Event, *, on_retry: Callable[[str], None],
                 sleep: Callable[[float], None] | None = None) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.stop = stop
        self.on_retry = on_retry
        self._sleep = sleep

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, action: str) -> None:
        """Raise Stopped when asked to stop, or a FalError when the time is up."""
        if self.stop.is_set():
            raise Stopped
        if self.remaining() <= 0:
            raise FalError(f"Timed out after {self.timeout:g} s while {action}. fal may be busy: try again "
                           "later (scripts can allow more time with FalQueueClient(timeout=...)).")

    def pause(self, seconds: float) -> None:
        """Wait between polls; returns early (raising Stopped) when the run is stopped."""
        if self.stop.wait(max(0.0, min(seconds, self.remaining()))):
            raise Stopped

    def backoff(self, seconds: float) -> None:
        if self._sleep is None:
            self.pause(seconds)
        else:  # injected by tests and benchmarks to observe back-off without waiting for it
            self._sleep(seconds)


@dataclass(frozen=True)
class Answer:
    """A whole HTTP answer, read within the budget and the size cap."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:  # absent, or an HTTP date: fall back to our own backoff
        return None


def json_answer(answer: Answer, action: str, required: tuple[str, ...] = (), *, key: str | None) -> dict[str, Any]:
    """The JSON object fal answered, with `required` fields present, or a FalError saying what is wrong."""
    try:
        parsed = answer.json()
    except (ValueError, RecursionError):  # RecursionError: a hostile "[[[[..." nests deeper than Python
        kind = excerpt(answer.headers.get("Content-Type", "no content type"), key, 60)
        text = excerpt(answer.body.decode("utf-8", "replace"), key, 120)
        raise malformed(action, f"not JSON but {kind}: {text!r}") from None
    if not isinstance(parsed, dict):
        raise malformed(action, f"a JSON {type(parsed).__name__} instead of an object")
    missing = [name for name in required if not parsed.get(name)]
    if missing:
        raise malformed(action, "missing " + ", ".join(missing))
    return parsed


def never_sent(exc: requests.RequestException) -> bool:
    """True when the connection was never made, so the server cannot have seen the request."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None  # urllib3's MaxRetryError
    if isinstance(reason, UrllibProxyError):
        reason = reason.original_error
    return isinstance(exc, requests.ConnectionError) and isinstance(reason, NewConnectionError)


def retryable_answer(answer: Answer, creates_job: bool) -> bool:
    if answer.status == 429:
        return True
    if answer.status < 500:
        return False
    return not creates_job or answer.status in EDGE_ERRORS and REQUEST_ID_HEADER not in answer.headers


class FalTransport:
    """Sends HTTP requests with retries inside a Budget; the only place that attaches the key."""

    def __init__(self, session: requests.Session, retry: RetryPolicy, http_timeout: float,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.session = session
        self.retry = retry
        self.http_timeout = http_timeout
        self.sleep = sleep
        self.watchdog = Watchdog()

    def request(self, method: str, url: str, *, action: str, budget: Budget, key: str | None,
                key_origin: Origin | None = None, json_body: Any = None, data: bytes | None = None,
                content_type: str | None = None, max_bytes: int = MAX_ANSWER_BYTES, creates_job: bool = False,
                attempts: int | None = None, error: ErrorBuilder = http_error) -> Answer:
        """The first 2xx answer; anything else after the retries becomes a FalError.

        `key_origin`: send the key, and only if `url` is on that origin; None sends no key.
        `key` is also what every message hides. `creates_job`: retry only what fal surely did not take.
        """
        if key and redact(url, key) != url:  # a server that echoes the key into a URL: logs would show it
            raise FalError(f"fal's answer named a URL for {action} that contains the fal key "
                           f"({excerpt(url, key, 120)}); refused. Try again.")
        headers = {"Content-Type": content_type} if content_type else {}
        if key_origin is not None:
            check_same_origin(url, key_origin, what=f"the URL for {action}", key=key)
            headers["Authorization"] = f"Key {key}"
        attempts = max(1, self.retry.attempts if attempts is None else attempts)
        for attempt in range(1, attempts + 1):
            try:  # redirects only without the key: requests would keep it across a redirect to the same host
                answer = self.exchange(method, url, action=action, budget=budget, headers=headers,
                                       json_body=json_body, data=data, max_bytes=max_bytes,
                                       follow_redirects=key_origin is None and method == "GET",
                                       stop_grace=SUBMIT_STOP_GRACE if creates_job else 0.0)
            except requests.RequestException as exc:
                retry = isinstance(exc, TRANSIENT) and (not creates_job or never_sent(exc))
                final = partial(unreachable, url, exc, action=action, key=key,
                                maybe_taken=creates_job and not never_sent(exc))
                if not retry:
                    raise final(attempts=attempt) from None
                failure, wait_hint = type(exc).__name__, None
            else:
                if 200 <= answer.status < 300:
                    return answer
                final = partial(error, answer.status, answer.body, action=action, key=key)
                if not retryable_answer(answer, creates_job):
                    raise final(attempts=attempt)
                failure, wait_hint = f"HTTP {answer.status}", retry_after_seconds(answer.headers)
            delay = self.retry.delay(attempt, wait_hint)
            if attempt == attempts or delay >= budget.remaining():
                raise final(attempts=attempt)
            message = excerpt(f"{failure} while {action}; retrying in {delay:.1f} s "
                              f"(attempt {attempt + 1} of {attempts})", key, 400)
            logger.info("fal: %s", message)
            budget.on_retry(message)
            budget.backoff(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def exchange(self, method: str, url: str, *, action: str, budget: Budget, headers: Mapping[str, str],
                 json_body: Any = None, data: bytes | None = None, max_bytes: int = MAX_ANSWER_BYTES,
                 follow_redirects: bool = False, stop_grace: float = 0.0) -> Answer:
        """One request and its whole answer, cut as soon as the budget is spent or stopped
        (`stop_grace` seconds after a stop)."""
        budget.check(action)
        remaining = budget.remaining()
        timeout = (max(0.05, min(CONNECT_SECONDS, self.http_timeout, remaining)),
                   max(0.05, min(self.http_timeout, remaining)))
        with self.watchdog.watching(budget.deadline, budget.stop, stop_grace) as watch:
            try:
                with self.session.request(method, url, headers=dict(headers), json=json_body, data=data,
                                          timeout=timeout, stream=True, allow_redirects=follow_redirects) as response:
                    body = read_capped(response, max_bytes, action=action, late=watch.due)
            except Exception:
                if watch.cut or watch.due():  # ended by the watchdog or read_capped: say why instead
                    budget.check(action)  # raises Stopped, or the timeout
                raise
            if watch.cut:  # a cut can also look like a short answer (headers ended early): never trust one
                budget.check(action)
            return Answer(response.status_code, response.headers, body)


def read_capped(response: requests.Response, max_bytes: int, *, action: str, late: Callable[[], bool]) -> bytes:
    """The (decoded) body, refused past `max_bytes`; between chunks, `late()` ends it (Watch.due)."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(action, max_bytes)
    body = bytearray()
    for chunk in response.iter_content(CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            raise too_large(action, max_bytes)
        if late():
            raise requests.ConnectionError("ended by the deadline or a stop")  # exchange() says which
    return bytes(body)


def unreachable(url: str, exc: requests.RequestException, *, action: str, attempts: int, key: str | None,
                maybe_taken: bool = False) -> FalError:
    """The FalError for a connection error or read timeout that outlasted the retries."""
    origin = Origin.of(url)
    host = excerpt(origin.host if origin else url, key, 120)
    detail = excerpt(f"{type(exc).__name__}: {exc}", key, 200)
    if not isinstance(exc, TRANSIENT):
        return FalError(f"Could not send the request for {action} to {host}: {detail}. Try again; if it "
                        "persists, fal's answers may have changed.")
    what = "did not answer in time" if isinstance(exc, requests.Timeout) else "could not be reached"
    tries = f" ({attempts} attempts)" if attempts > 1 else ""
    taken = (" The request had been sent, so it was not sent again (fal may have started it, and would "
             "bill it once).") if maybe_taken else ""
    return FalError(f"{host} {what}{tries} while {action}: {detail}.{taken} Check the internet connection "
                    "(and any proxy), then try again.")
