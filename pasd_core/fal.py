"""Client for fal's hosted `fal-ai/pasd` endpoint, on fal's queue API over `requests`.

Per image: submit (`POST {queue}/fal-ai/pasd`), poll the status URL with `?logs=1`
(IN_QUEUE -> IN_PROGRESS -> COMPLETED), fetch the response URL, download the image it names; the
cancel URL (`PUT`) stops a request early. A batch runs up to `max_in_flight` requests at once in
worker threads; every callback (`on_log`, `on_progress`, `should_stop`) runs on the caller's thread.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from PIL import Image
from requests.adapters import HTTPAdapter

from .errors import Interrupted, PASDError
from .fal_errors import ENDPOINT, FalError, download_error, failed_on_fal, malformed, shorten
from .fal_key import find_fal_key
from .fal_transport import Budget, FalTransport, RetryPolicy, Stopped, json_answer
from .params import REMOTE_PARAMS, fal_arguments, validate

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_URL = "https://queue.fal.run"
DEFAULT_REST_URL = "https://rest.fal.ai"
PRICE_PER_MEGAPIXEL_USD = 0.03  # fal's listed price for fal-ai/pasd, per output megapixel
STATUSES = ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")

__all__ = ["FalError", "FalQueueClient", "QueueRequest", "RetryPolicy", "estimated_cost_usd", "upscale_images"]


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


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class FalQueueClient:
    """Upscales PIL images on fal-ai/pasd. The key comes from `key` or the environment (see fal_key)."""

    def __init__(self, *, key: str | None = None, queue_url: str | None = None, rest_url: str | None = None,
                 max_in_flight: int = 4, timeout: float = 900.0, http_timeout: float = 120.0,
                 poll_interval: float = 0.5, retry: RetryPolicy | None = None,
                 upload_threshold: int = 10 * 1024 * 1024, sleep: Callable[[float], None] | None = None,
                 session: requests.Session | None = None) -> None:
        """`timeout`: seconds one image may take from submit to downloaded result (queue time included);
        `upload_threshold`: PNGs larger than this many bytes go through fal's storage upload instead
        of a data URI; `sleep`: replaces the retry back-off wait (tests)."""
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._key = key
        self.queue_url = (queue_url or os.environ.get("FAL_QUEUE_URL") or DEFAULT_QUEUE_URL).rstrip("/")
        self.rest_url = (rest_url or os.environ.get("FAL_REST_URL") or DEFAULT_REST_URL).rstrip("/")
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.upload_threshold = upload_threshold
        if session is None:
            session = requests.Session()
            # One pooled connection per request in flight (urllib3 keeps 10 per host by default).
            adapter = HTTPAdapter(pool_maxsize=max(10, 2 * max_in_flight))
            session.mount("https://", adapter)
            session.mount("http://", adapter)
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
        key = self._key or find_fal_key()
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

        def log(message: str) -> None:
            events.put(("log", f"{ENDPOINT}: {label}{message}"))

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
                raise failed_on_fal(status["error"], status.get("error_type"))
            answer = self.result(request, key=key, budget=budget)
            result = self._check_size(self.download(answer, budget=budget, secret=key), image, arguments["scale"])
        except BaseException as exc:  # noqa: BLE001  # handed to the caller's thread, which raises it
            error = exc
        events.put(("done", index, result, error))

    # -- the queue verbs ------------------------------------------------------------------------

    def submit(self, body: dict[str, Any], *, key: str, budget: Budget) -> QueueRequest:
        action = f"submitting the image to {ENDPOINT}"
        response = self.transport.request("POST", f"{self.queue_url}/{ENDPOINT}", action=action, budget=budget,
                                          secret=key, headers=self._auth(key), json_body=body)
        answer = json_answer(response, action, required=("request_id",), secret=key)
        request_id = str(answer["request_id"])
        base = f"{self.queue_url}/{ENDPOINT}/requests/{request_id}"  # fal's layout, if a URL is missing
        request = QueueRequest(request_id, answer.get("status_url") or f"{base}/status",
                               answer.get("response_url") or base, answer.get("cancel_url") or f"{base}/cancel")
        if budget.stop.is_set():  # stopped while the submit was on the wire: do not leave it running
            self.cancel(request, key=key)
            raise Stopped
        return request

    def wait(self, request: QueueRequest, *, key: str, budget: Budget, log: Callable[[str], None],
             tick: Callable[[], None]) -> dict[str, Any]:
        """Poll until COMPLETED; each new log line goes to `log` once, each poll calls `tick`."""
        seen: set[tuple[Any, ...]] = set()
        last: tuple[str, Any] = ("none", None)
        while True:
            action = f"waiting for {ENDPOINT} (request {request.request_id}, last status {last[0]})"
            url = request.status_url + ("&" if "?" in request.status_url else "?") + "logs=1"
            response = self.transport.request("GET", url, action=action, budget=budget, secret=key,
                                              headers=self._auth(key))
            status = json_answer(response, action, required=("status",), secret=key)
            state, position = status["status"], status.get("queue_position")
            if state not in STATUSES:
                raise malformed(action, f"unknown status {state!r}")
            tick()
            if (state, position) != last:
                log(f"in queue (position {position})" if state == "IN_QUEUE" and position is not None
                    else state.lower().replace("_", " "))
                last = (state, position)
            for line in status.get("logs") or ():
                entry = (line.get("timestamp"), line.get("message")) if isinstance(line, dict) else (None, line)
                if entry not in seen:
                    seen.add(entry)
                    log(str(entry[1]))
            if state == "COMPLETED":  # with an `error` field when the request failed on fal's side
                return status
            budget.pause(self.poll_interval)

    def result(self, request: QueueRequest, *, key: str, budget: Budget) -> dict[str, Any]:
        action = f"fetching the result of request {request.request_id}"
        response = self.transport.request("GET", request.response_url, action=action, budget=budget, secret=key,
                                          headers=self._auth(key))
        return json_answer(response, action, required=("images",), secret=key)

    def cancel(self, request: QueueRequest, *, key: str) -> None:
        """Ask fal to drop the request; best effort (fal answers 400/404 when it already finished)."""
        try:
            response = self.transport.session.put(request.cancel_url, headers=self._auth(key), timeout=10)
            logger.info("%s: cancel of request %s answered HTTP %d", ENDPOINT, request.request_id,
                        response.status_code)
        except requests.RequestException as exc:
            logger.warning("%s: could not cancel request %s: %s", ENDPOINT, request.request_id, type(exc).__name__)

    # -- images in and out ----------------------------------------------------------------------

    def _image_url(self, png: bytes, key: str, budget: Budget) -> str:
        """A data URI, or for a large PNG the URL of a copy put on fal's storage (public, like results)."""
        if len(png) <= self.upload_threshold:
            return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        action = "uploading the image to fal storage"
        response = self.transport.request(
            "POST", f"{self.rest_url}/storage/upload/initiate?storage_type=fal-cdn-v3", action=action, budget=budget,
            secret=key, headers=self._auth(key), json_body={"content_type": "image/png", "file_name": "pasd-input.png"})
        target = json_answer(response, action, required=("upload_url", "file_url"), secret=key)
        # The signed upload URL needs no key: fal's clients PUT the bytes with only a content type.
        self.transport.request("PUT", target["upload_url"], action=action, budget=budget, secret=key,
                               headers={"Content-Type": "image/png"}, data=png)
        return str(target["file_url"])

    def download(self, answer: Mapping[str, Any], *, budget: Budget, secret: str | None = None) -> Image.Image:
        """The first image of a result answer, fetched without the key (fal's file URLs are public)."""
        action = "reading the result"
        images = answer.get("images")
        if not isinstance(images, list) or not images or not isinstance(images[0], dict) \
                or not isinstance(images[0].get("url"), str):
            raise malformed(action, "no images[0].url")
        url = images[0]["url"]
        if url.startswith("data:"):
            try:
                data = base64.b64decode(url.partition(",")[2], validate=True)
            except (binascii.Error, ValueError):
                raise malformed(action, "an image data URI that is not base64") from None
        else:
            data = self.transport.request("GET", url, action=f"downloading the result image {shorten(url, 100)}",
                                          budget=budget, secret=secret, error=download_error).content
        try:
            with Image.open(io.BytesIO(data)) as result:
                return result.convert("RGB")
        except (OSError, ValueError):
            raise FalError(f"The result image {shorten(url, 100)} is not a readable image "
                           f"({len(data)} bytes); try again.") from None

    @staticmethod
    def _check_size(result: Image.Image, source: Image.Image, scale: int) -> Image.Image:
        expected = (source.width * scale, source.height * scale)
        if result.size != expected:
            raise FalError(f"{ENDPOINT} returned a {result.width}x{result.height} image for a "
                           f"{source.width}x{source.height} input at scale {scale}; expected "
                           f"{expected[0]}x{expected[1]}.")
        return result

    @staticmethod
    def _auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Key {key}"}


def upscale_images(images: Sequence[Image.Image], settings: Mapping[str, Any] | None = None, *,
                   on_log: Callable[[str], None] | None = None, on_progress: Callable[[], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, **options: Any) -> list[Image.Image]:
    """One call for scripts: `upscale_images([Image.open("in.png")], {"scale": 4})`.

    `options` go to FalQueueClient (key, max_in_flight, timeout, ...); the key defaults to FAL_KEY.
    """
    return FalQueueClient(**options).upscale_batch(images, settings or {}, on_log=on_log, on_progress=on_progress,
                                                   should_stop=should_stop)
