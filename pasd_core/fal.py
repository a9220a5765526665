"""Client for fal's hosted `fal-ai/pasd` endpoint, on fal's queue API over `requests`.

Per image: submit (`POST {queue}/fal-ai/pasd`), poll the status URL with `?logs=1`
(IN_QUEUE -> IN_PROGRESS -> COMPLETED), fetch the response URL, download the image it names; the
cancel URL (`PUT`) stops a request early. A batch runs up to `max_in_flight` requests at once in
worker threads; every callback (`on_log`, `on_progress`, `should_stop`) runs on the caller's thread.
The server is not trusted: the key goes only to the configured hosts (fal_origin), whatever it
says is shown only through `fal_redact`, and each image has one deadline however slowly it answers.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from PIL import Image

from .errors import Interrupted, PASDError
from .fal_errors import ENDPOINT, FalError, download_error, failed_on_fal, malformed
from .fal_images import data_uri_bytes, decode_result, png_bytes, png_data_uri, result_byte_cap
from .fal_key import check_key, find_fal_key
from .fal_origin import Origin, check_public_url, configured_origin
from .fal_redact import excerpt, redact
from .fal_transport import MAX_ANSWER_BYTES, Budget, FalTransport, RetryPolicy, Stopped, json_answer
from .fal_watchdog import watched_session
from .params import REMOTE_PARAMS, fal_arguments, validate

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_URL = "https://queue.fal.run"
DEFAULT_REST_URL = "https://rest.fal.ai"
PRICE_PER_MEGAPIXEL_USD = 0.03  # fal's listed price for fal-ai/pasd, per output megapixel
STATUSES = ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # fal's are UUIDs; they also go into URLs
CANCEL_SECONDS = 5.0  # a cancel is best effort: it must not hold up an interrupted batch
LOG_LINE_CHARS = 500

__all__ = ["FalError", "FalQueueClient", "QueueRequest", "RetryPolicy", "estimated_cost_usd", "png_bytes",
           "upscale_images"]


@dataclass(frozen=True)
class QueueRequest:
    """One submitted request: fal's id and the three URLs its submit answer gave."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str


def estimated_cost_usd(sizes: Iterable[tuple[int, int]], scale: int) -> float:
    """What fal charges for upscaling images of these (width, height) sizes by `scale`."""
    megapixels = sum(w * scale * h * scale for w, h in sizes) / 1e6
    return megapixels * PRICE_PER_MEGAPIXEL_USD


class FalQueueClient:
    """Upscales PIL images on fal-ai/pasd. The key comes from `key` or the environment (see fal_key)."""

    def __init__(self, *, key: str | None = None, queue_url: str | None = None, rest_url: str | None = None,
                 max_in_flight: int = 4, timeout: float = 900.0, http_timeout: float = 120.0,
                 poll_interval: float = 0.5, retry: RetryPolicy | None = None,
                 upload_threshold: int = 10 * 1024 * 1024, sleep: Callable[[float], None] | None = None,
                 session: requests.Session | None = None) -> None:
        """`timeout`: seconds one image may take from submit to downloaded result (queue time included);
        `upload_threshold`: PNGs larger than this many bytes go through fal's storage upload instead
        of a data URI; `sleep`: replaces the retry back-off wait (tests); `session`: a requests
        Session of your own loses the hard deadline on slow answers (see fal_watchdog)."""
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._key = key
        self.queue_url = (queue_url or os.environ.get("FAL_QUEUE_URL") or DEFAULT_QUEUE_URL).rstrip("/")
        self.rest_url = (rest_url or os.environ.get("FAL_REST_URL") or DEFAULT_REST_URL).rstrip("/")
        # the key goes only to these two origins, and never over plain http across a network
        self.queue_origin = configured_origin(self.queue_url, "queue_url" if queue_url else "FAL_QUEUE_URL")
        self.rest_origin = configured_origin(self.rest_url, "rest_url" if rest_url else "FAL_REST_URL")
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.upload_threshold = upload_threshold
        # one pooled connection per request in flight (urllib3 keeps 10 per host by default)
        session = session or watched_session(pool_size=max(10, 2 * max_in_flight))
        self.transport = FalTransport(session, retry or RetryPolicy(), http_timeout, sleep)

    def __repr__(self) -> str:  # never the key
        return f"FalQueueClient(queue_url={self.queue_url!r}, max_in_flight={self.max_in_flight})"

    # -- the batch ------------------------------------------------------------------------------

    def upscale_batch(self, images: Sequence[Image.Image], settings: Mapping[str, Any], *,
                      on_log: Callable[[str], None] | None = None, on_progress: Callable[[], None] | None = None,
                      should_stop: Callable[[], bool] | None = None) -> list[Image.Image]:
        """Upscale every image (results in input order); one failure cancels the rest and names the image.

        `on_log(message)` gets each fal log line once, `on_progress()` is called once per status poll,
        and `should_stop()` is checked between polls: when it returns True every request still
        running is cancelled and `Interrupted` is raised.
        """
        settings = validate(settings, REMOTE_PARAMS)
        images = list(images)
        if not images:
            return []
        key = check_key(self._key.strip(), "the key argument") if self._key else find_fal_key()
        count = len(images)
        cost = estimated_cost_usd((im.size for im in images), settings["scale"])
        summary = (f"{count} image(s), {cost / PRICE_PER_MEGAPIXEL_USD:.2f} output megapixels, about ${cost:.2f} "
                   f"(${PRICE_PER_MEGAPIXEL_USD:.2f} per megapixel)")
        # one place for the estimate: the caller's log sink when there is one, else this module's logger
        (on_log or (lambda line: logger.info("%s", line)))(f"{ENDPOINT}: {summary}")
        stop, events = threading.Event(), queue.Queue()
        arguments = fal_arguments(settings)
        results: list[Image.Image | None] = [None] * count
        failure: tuple[int, BaseException] | None = None
        interrupted, finished = False, 0
        pool = ThreadPoolExecutor(max_workers=min(self.max_in_flight, count), thread_name_prefix="fal-pasd")
        try:
            for index, image in enumerate(images):
                pool.submit(self._run_one, index, count, image, arguments, key, stop, events)
            while finished < count:
                if should_stop is not None and not stop.is_set() and should_stop():
                    interrupted = True
                    stop.set()
                try:
                    kind, *payload = events.get(timeout=self.poll_interval)
                except queue.Empty:
                    continue
                if kind == "log" and on_log is not None:
                    on_log(payload[0])
                elif kind == "progress" and on_progress is not None:
                    on_progress()
                elif kind == "done":
                    finished += 1
                    index, upscaled, error = payload
                    results[index] = upscaled
                    if error is not None and failure is None and not isinstance(error, Stopped):
                        failure = (index, error)
                        stop.set()
        finally:
            stop.set()  # on success a no-op; on an exception in a callback, workers cancel and exit
            pool.shutdown(wait=True)
        if interrupted:
            raise Interrupted(f"Interrupted: the {ENDPOINT} requests still running were cancelled.")
        if failure is not None:
            index, error = failure
            if count > 1 and isinstance(error, PASDError):
                status_code = getattr(error, "status_code", None)
                raise FalError(f"image {index + 1} of {count}: {error}", status_code=status_code) from error
            raise error
        return results  # type: ignore[return-value]  # every slot was filled

    def _run_one(self, index: int, count: int, image: Image.Image, arguments: dict[str, Any], key: str,
                 stop: threading.Event, events: queue.Queue) -> None:
        """Worker thread: one image end to end; reports through `events`, never raises."""
        label = f"image {index + 1} of {count}: " if count > 1 else ""

        def log(message: str) -> None:  # fal's log lines and our status words alike: key hidden, one line
            events.put(("log", f"{ENDPOINT}: {label}{excerpt(message, key, LOG_LINE_CHARS)}"))

        result, error = None, None
        try:
            budget = Budget(self.timeout, stop, on_retry=log, sleep=self.transport.sleep)
            budget.check("waiting for a free slot")
            body = {"image_url": self._image_url(png_bytes(image), key, budget), **arguments}
            request = self.submit(body, key=key, budget=budget)
            try:
                status = self.wait(request, key=key, budget=budget, log=log, tick=lambda: events.put(("progress",)))
            except BaseException:
                self.cancel(request, key=key)  # still queued or running on fal: do not leave it to be billed
                raise
            if status.get("error"):
                raise failed_on_fal(status["error"], status.get("error_type"), key)
            scale = arguments["scale"]
            answer = self.result(request, key=key, budget=budget, expected=(image.width * scale, image.height * scale))
            result = self.download(answer, source=image.size, scale=scale, budget=budget, key=key)
        except Stopped as exc:
            error = exc
        except FalError as exc:  # the last word on the key, whatever the message was built from
            error = FalError(redact(str(exc), key), status_code=exc.status_code)
        except Exception as exc:  # noqa: BLE001  # handed to the caller's thread, which raises it
            error = FalError(f"{ENDPOINT}: unexpected {type(exc).__name__}: {excerpt(str(exc), key)}")
        except BaseException as exc:  # noqa: BLE001
            error = exc
        events.put(("done", index, result, error))

    # -- the queue verbs ------------------------------------------------------------------------

    def submit(self, body: dict[str, Any], *, key: str, budget: Budget) -> QueueRequest:
        action = f"submitting the image to {ENDPOINT}"
        answer = self.transport.request("POST", f"{self.queue_url}/{ENDPOINT}", action=action, budget=budget,
                                        key=key, key_origin=self.queue_origin, json_body=body, creates_job=True)
        fields = json_answer(answer, action, required=("request_id",), key=key)
        request_id = fields["request_id"]
        if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
            raise malformed(action, f"a request_id that is not an id: {excerpt(str(request_id), key, 60)!r}")
        base = f"{self.queue_url}/{ENDPOINT}/requests/{request_id}"  # fal's layout, if a URL is missing
        urls = {name: fields.get(name) or default for name, default in (
            ("status_url", f"{base}/status"), ("response_url", base), ("cancel_url", f"{base}/cancel"))}
        request = QueueRequest(request_id, **urls)
        foreign = [name for name, url in urls.items()
                   if not isinstance(url, str) or Origin.of(url) != self.queue_origin]
        if foreign:  # the key is not sent there: stop the job at fal's own address, and say why
            self.cancel(QueueRequest(request_id, f"{base}/status", base, f"{base}/cancel"), key=key)
            shown = excerpt(str(urls[foreign[0]]), key, 120)
            raise FalError(f"fal's answer to {action} put its {foreign[0]} at {shown!r}, not on the configured "
                           f"{self.queue_origin}. The fal key is sent only to {self.queue_origin}, so nothing was "
                           "sent there, and the request was cancelled. If FAL_QUEUE_URL points at a proxy, point it "
                           "at fal itself (or unset it); otherwise try again.")
        if budget.stop.is_set():  # stopped while the submit was on the wire: do not leave it running
            self.cancel(request, key=key)
            raise Stopped
        return request

    def wait(self, request: QueueRequest, *, key: str, budget: Budget, log: Callable[[str], None],
             tick: Callable[[], None]) -> dict[str, Any]:
        """Poll until COMPLETED; each new log line goes to `log` once, each poll calls `tick`."""
        seen: set[tuple[str, str]] = set()
        last: tuple[str, Any] = ("none", None)
        while True:
            action = f"waiting for {ENDPOINT} (request {request.request_id}, last status {last[0]})"
            url = request.status_url + ("&" if "?" in request.status_url else "?") + "logs=1"
            answer = self.transport.request("GET", url, action=action, budget=budget, key=key,
                                            key_origin=self.queue_origin)
            status = json_answer(answer, action, required=("status",), key=key)
            state, position = status["status"], status.get("queue_position")
            if not isinstance(state, str) or state not in STATUSES:
                raise malformed(action, f"unknown status {excerpt(str(state), key, 60)!r}")
            position = position if isinstance(position, int) and not isinstance(position, bool) else None
            tick()
            if (state, position) != last:
                log(f"in queue (position {position})" if state == "IN_QUEUE" and position is not None
                    else state.lower().replace("_", " "))
                last = (state, position)
            lines = status.get("logs")
            for line in lines if isinstance(lines, list) else ():
                entry = (str(line.get("timestamp")), str(line.get("message"))) if isinstance(line, dict) \
                    else ("", str(line))
                if entry not in seen:
                    seen.add(entry)
                    log(entry[1])
            if state == "COMPLETED":  # with an `error` field when the request failed on fal's side
                return status
            budget.pause(self.poll_interval)

    def result(self, request: QueueRequest, *, key: str, budget: Budget,
               expected: tuple[int, int] = (0, 0)) -> dict[str, Any]:
        """The result answer; `expected` (the output's width, height) sizes the cap for an inline image."""
        action = f"fetching the result of request {request.request_id}"
        answer = self.transport.request("GET", request.response_url, action=action, budget=budget, key=key,
                                        key_origin=self.queue_origin,
                                        max_bytes=max(MAX_ANSWER_BYTES, result_byte_cap(expected) * 4 // 3))
        return json_answer(answer, action, required=("images",), key=key)

    def cancel(self, request: QueueRequest, *, key: str) -> None:
        """Ask fal to drop the request; best effort (fal answers 400/404 when it already finished)."""
        budget = Budget(CANCEL_SECONDS, threading.Event(), on_retry=lambda message: None)
        action = f"cancelling request {request.request_id}"
        try:
            self.transport.request("PUT", request.cancel_url, action=action, budget=budget, key=key,
                                   key_origin=self.queue_origin, attempts=1)
            logger.info("%s: cancelled request %s", ENDPOINT, excerpt(request.request_id, key, 130))
        except FalError as exc:  # 400 ALREADY_COMPLETED among them
            logger.info("%s: %s", ENDPOINT, redact(str(exc), key))

    # -- images in and out ----------------------------------------------------------------------

    def _image_url(self, png: bytes, key: str, budget: Budget) -> str:
        """A data URI, or for a large PNG the URL of a copy put on fal's storage (public, like results)."""
        if len(png) <= self.upload_threshold:
            return png_data_uri(png)
        action = "uploading the image to fal storage"
        answer = self.transport.request(
            "POST", f"{self.rest_url}/storage/upload/initiate?storage_type=fal-cdn-v3", action=action,
            budget=budget, key=key, key_origin=self.rest_origin,
            json_body={"content_type": "image/png", "file_name": "pasd-input.png"})
        target = json_answer(answer, action, required=("upload_url", "file_url"), key=key)
        upload_url, file_url = target["upload_url"], target["file_url"]
        if not isinstance(upload_url, str) or not isinstance(file_url, str):
            raise malformed(action, "upload_url or file_url is not a string")
        # The signed upload URL needs no key: fal's clients PUT the bytes with only a content type.
        check_public_url(upload_url, what="the upload URL", key=key)
        self.transport.request("PUT", upload_url, action=action, budget=budget, key=key,
                               content_type="image/png", data=png)
        return file_url

    def download(self, answer: Mapping[str, Any], *, source: tuple[int, int], scale: int, budget: Budget,
                 key: str | None = None) -> Image.Image:
        """The first image of a result answer, fetched without the key (fal's file URLs are public),
        at most as many bytes as an image of `source` size times `scale` can take, checked before decoding."""
        action = "reading the result"
        images = answer.get("images")
        if not isinstance(images, list) or not images or not isinstance(images[0], dict) \
                or not isinstance(images[0].get("url"), str):
            raise malformed(action, "no images[0].url")
        url = images[0]["url"]
        shown = excerpt(url, key, 100)
        cap = result_byte_cap((source[0] * scale, source[1] * scale))
        if url.startswith("data:"):
            data = data_uri_bytes(url, action)
        else:
            check_public_url(url, what="the result image", key=key)
            data = self.transport.request("GET", url, action=f"downloading the result image {shown}", budget=budget,
                                          key=key, max_bytes=cap, error=download_error).body
        if len(data) > cap:
            raise FalError(f"The result image {shown} is {len(data)} bytes, more than an image of its size can "
                           "take; refused. Try again.")
        return decode_result(data, source, scale, shown)


def upscale_images(images: Sequence[Image.Image], settings: Mapping[str, Any] | None = None, *,
                   on_log: Callable[[str], None] | None = None, on_progress: Callable[[], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, **options: Any) -> list[Image.Image]:
    """One call for scripts: `upscale_images([Image.open("in.png")], {"scale": 4})`.

    `options` go to FalQueueClient (key, max_in_flight, timeout, ...); the key defaults to FAL_KEY.
    """
    return FalQueueClient(**options).upscale_batch(images, settings or {}, on_log=on_log, on_progress=on_progress,
                                                   should_stop=should_stop)
