"""HTTP for the fal client: retries with backoff, a time budget per request, and stopping on demand.

Retried: HTTP 429, HTTP 5xx and connection errors or read timeouts, waiting `Retry-After` seconds
when fal sends it, else exponential backoff with jitter (as fal's clients do). Never retried: any
other 4xx, because sending the same request again cannot change fal's answer.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import requests

from .fal_errors import FalError, http_error, malformed, redact, shorten

logger = logging.getLogger(__name__)

# Builds the error for a final non-2xx answer: (status, body, action=, attempts=, secret=) -> FalError.
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


def retry_after_seconds(response: requests.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:  # absent, or an HTTP date: fall back to our own backoff
        return None


def json_answer(response: requests.Response, action: str, required: tuple[str, ...] = (), *,
                secret: str | None = None) -> dict[str, Any]:
    """The JSON object fal answered, with `required` fields present, or a FalError saying what is wrong."""
    try:
        answer = response.json()
    except ValueError:
        kind = response.headers.get("Content-Type", "no content type")
        raise malformed(action, f"not JSON but {kind}: {redact(shorten(response.text, 120), secret)!r}") from None
    if not isinstance(answer, dict):
        raise malformed(action, f"a JSON {type(answer).__name__} instead of an object")
    missing = [name for name in required if not answer.get(name)]
    if missing:
        raise malformed(action, "missing " + ", ".join(missing))
    return answer


class FalTransport:
    """Sends one HTTP request with retries inside a Budget; the key is only ever in `headers`."""

    def __init__(self, session: requests.Session, retry: RetryPolicy, http_timeout: float,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.session = session
        self.retry = retry
        self.http_timeout = http_timeout
        self.sleep = sleep

    def request(self, method: str, url: str, *, action: str, budget: Budget, secret: str | None = None,
                headers: dict[str, str] | None = None, json_body: Any = None, data: bytes | None = None,
                error: ErrorBuilder = http_error) -> requests.Response:
        """The first answer below 400; anything else after the retries becomes a FalError."""
        attempts = max(1, self.retry.attempts)
        for attempt in range(1, attempts + 1):
            budget.check(action)
            timeout = max(0.05, min(self.http_timeout, budget.remaining()))
            try:
                response = self.session.request(method, url, headers=headers, json=json_body, data=data,
                                                timeout=timeout)
            except requests.RequestException as exc:
                final = partial(unreachable, url, exc, action=action, secret=secret)
                failure, wait_hint = type(exc).__name__, None
            else:
                status = response.status_code
                if status < 400:
                    return response
                final = partial(error, status, response.content, action=action, secret=secret)
                if status != 429 and status < 500:
                    raise final(attempts=attempt)
                failure, wait_hint = f"HTTP {status}", retry_after_seconds(response)
            delay = self.retry.delay(attempt, wait_hint)
            if attempt == attempts or delay >= budget.remaining():
                raise final(attempts=attempt)
            message = f"{failure} while {action}; retrying in {delay:.1f} s (attempt {attempt + 1} of {attempts})"
            logger.info("fal: %s", message)
            budget.on_retry(message)
            budget.backoff(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


def unreachable(url: str, exc: requests.RequestException, *, action: str, attempts: int,
                secret: str | None) -> FalError:
    """The FalError for a connection error or read timeout that outlasted the retries."""
    host = urlsplit(url).netloc or url
    what = "did not answer in time" if isinstance(exc, requests.Timeout) else "could not be reached"
    tries = f" ({attempts} attempts)" if attempts > 1 else ""
    detail = redact(shorten(f"{type(exc).__name__}: {exc}", 200), secret)
    return FalError(f"{host} {what}{tries} while {action}: {detail}. Check the internet connection "
                    "(and any proxy), then try again.")
