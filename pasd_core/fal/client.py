"""One request to fal's hosted `fal-ai/pasd`, end to end, on fal's queue API over `requests`.

`FalQueueClient` holds the configuration (URLs, key, transport, timeouts); `submit` answers a
`QueueRequest`, the handle of one request in fal-client's shape: `status()` polls the status URL
with `?logs=1` (IN_QUEUE -> IN_PROGRESS -> COMPLETED), `wait()` polls until done, `result()`
fetches the response URL, `cancel()` (`PUT` on the cancel URL) stops it early. `upscale` runs one
image through all of them: upload, submit, wait, result, download. Batches live in batch.py.
The server is not trusted: the key goes only to the configured hosts (origin.py), whatever it
says is shown only through `redact.py`, and each image has one deadline however slowly it answers.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from PIL import Image

from .errors import ENDPOINT, FalError, download_error, failed_on_fal, malformed
from .images import data_uri_bytes, decode_result, png_bytes, png_data_uri, result_byte_cap
from .key import check_key, find_fal_key
from .origin import Origin, check_public_url, configured_origin
from .redact import excerpt, redact
from .transport import MAX_ANSWER_BYTES, Budget, FalTransport, RetryPolicy, Stopped, json_answer
from .watchdog import watched_session

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_URL = "https://queue.fal.run"
DEFAULT_REST_URL = "https://rest.fal.ai"
STATUSES = ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # fal's are UUIDs; they also go into URLs
CANCEL_SECONDS = 5.0  # a cancel is best effort: it must not hold up an interrupted batch


@dataclass(frozen=True)
class QueueRequest:
    """The handle of one submitted request: fal's id, the three URLs its submit answer gave, and its verbs."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    client: FalQueueClient = field(repr=False, compare=False)
    key: str = field(repr=False, compare=False)  # never in a repr

    def status(self, budget: Budget, *, last_status: str = "none") -> dict[str, Any]:
        """One poll of the status URL, logs included; the answer checked (a known `status`, an int or
        None `queue_position`). `last_status` only words the message if the poll fails."""
        client, key = self.client, self.key
        action = f"waiting for {ENDPOINT} (request {self.request_id}, last status {last_status})"
        url = self.status_url + ("&" if "?" in self.status_url else "?") + "logs=1"
        answer = client.transport.request("GET", url, action=action, budget=budget, key=key,
                                          key_origin=client.queue_origin)
        status = json_answer(answer, action, required=("status",), key=key)
        if not isinstance(status["status"], str) or status["status"] not in STATUSES:
            raise malformed(action, f"unknown status {excerpt(str(status['status']), key, 60)!r}")
        position = status.get("queue_position")
        status["queue_position"] = position if isinstance(position, int) and not isinstance(position, bool) else None
        return status

    def wait(self, budget: Budget, *, log: Callable[[str], None], tick: Callable[[], None]) -> dict[str, Any]:
        """Poll until COMPLETED; each new log line goes to `log` once, each poll calls `tick`."""
        seen: set[tuple[str, str]] = set()
        last: tuple[str, Any] = ("none", None)
        while True:
            status = self.status(budget, last_status=last[0])
            state, position = status["status"], status["queue_position"]
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
            budget.pause(self.client.poll_interval)

    def result(self, budget: Budget, *, expected: tuple[int, int] = (0, 0)) -> dict[str, Any]:
        """The result answer; `expected` (the output's width, height) sizes the cap for an inline image."""
        action = f"fetching the result of request {self.request_id}"
        answer = self.client.transport.request(
            "GET", self.response_url, action=action, budget=budget, key=self.key, key_origin=self.client.queue_origin,
            max_bytes=max(MAX_ANSWER_BYTES, result_byte_cap(expected) * 4 // 3))
        return json_answer(answer, action, required=("images",), key=self.key)

    def cancel(self) -> None:
        """Ask fal to drop the request; best effort (fal answers 400/404 when it already finished)."""
        budget = Budget(CANCEL_SECONDS, threading.Event(), on_retry=lambda message: None)
        action = f"cancelling request {self.request_id}"
        try:
            self.client.transport.request("PUT", self.cancel_url, action=action, budget=budget, key=self.key,
                                          key_origin=self.client.queue_origin, attempts=1)
            logger.info("%s: cancelled request %s", ENDPOINT, excerpt(self.request_id, self.key, 130))
        except FalError as exc:  # 400 ALREADY_COMPLETED among them
            logger.info("%s: %s", ENDPOINT, redact(str(exc), self.key))


class FalQueueClient:
    """Upscales PIL images on fal-ai/pasd. The key comes from `key` or the environment (see key.py)."""

    def __init__(self, *, key: str | None = None, queue_url: str | None = None, rest_url: str | None = None,
                 max_in_flight: int = 4, timeout: float = 900.0, http_timeout: float = 120.0,
                 poll_interval: float = 0.5, retry: RetryPolicy | None = None,
                 upload_threshold: int = 10 * 1024 * 1024, sleep: Callable[[float], None] | None = None,
                 session: requests.Session | None = None) -> None:
        """`timeout`: seconds one image may take from submit to downloaded result (queue time included);
        `upload_threshold`: PNGs larger than this many bytes go through fal's storage upload instead
        of a data URI; `sleep`: replaces the retry back-off wait (tests); `session`: a requests
        Session of your own loses the hard deadline on slow answers (see watchdog.py)."""
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

    def resolve_key(self) -> str:
        """The key given to this client, checked, else the one found in the environment (key.py)."""
        return check_key(self._key.strip(), "the key argument") if self._key else find_fal_key()

    # -- one request ----------------------------------------------------------------------------

    def handle(self, request_id: str, *, key: str) -> QueueRequest:
        """The handle of a request by its id, at fal's URL layout under the configured queue."""
        base = f"{self.queue_url}/{ENDPOINT}/requests/{request_id}"
        return QueueRequest(request_id, f"{base}/status", base, f"{base}/cancel", self, key)

    def submit(self, body: dict[str, Any], *, key: str, budget: Budget) -> QueueRequest:
        """POST the request body to the queue; the handle of the job fal created."""
        action = f"submitting the image to {ENDPOINT}"
        answer = self.transport.request("POST", f"{self.queue_url}/{ENDPOINT}", action=action, budget=budget,
                                        key=key, key_origin=self.queue_origin, json_body=body, creates_job=True)
        fields = json_answer(answer, action, required=("request_id",), key=key)
        request_id = fields["request_id"]
        if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
            raise malformed(action, f"a request_id that is not an id: {excerpt(str(request_id), key, 60)!r}")
        default = self.handle(request_id, key=key)  # fal's layout, if a URL is missing
        urls = {name: fields.get(name) or getattr(default, name)
                for name in ("status_url", "response_url", "cancel_url")}
        foreign = [name for name, url in urls.items()
                   if not isinstance(url, str) or Origin.of(url) != self.queue_origin]
        if foreign:  # the key is not sent there: stop the job at fal's own address, and say why
            default.cancel()
            shown = excerpt(str(urls[foreign[0]]), key, 120)
            raise FalError(f"fal's answer to {action} put its {foreign[0]} at {shown!r}, not on the configured "
                           f"{self.queue_origin}. The fal key is sent only to {self.queue_origin}, so nothing was "
                           "sent there, and the request was cancelled. If FAL_QUEUE_URL points at a proxy, point it "
                           "at fal itself (or unset it); otherwise try again.")
        request = QueueRequest(request_id, **urls, client=self, key=key)
        if budget.stop.is_set():  # stopped while the submit was on the wire: do not leave it running
            request.cancel()
            raise Stopped
        return request

    def upscale(self, image: Image.Image, arguments: Mapping[str, Any], *, key: str, budget: Budget,
                log: Callable[[str], None], tick: Callable[[], None]) -> Image.Image:
        """One image end to end: upload, submit, wait (cancelled on any failure), result, download.
        `arguments` is fal's request body without the image (params.fal_arguments)."""
        body = {"image_url": self._image_url(png_bytes(image), key, budget), **arguments}
        request = self.submit(body, key=key, budget=budget)
        try:
            status = request.wait(budget, log=log, tick=tick)
        except BaseException:
            request.cancel()  # still queued or running on fal: do not leave it to be billed
            raise
        if status.get("error"):
            raise failed_on_fal(status["error"], status.get("error_type"), key)
        scale = arguments["scale"]
        answer = request.result(budget, expected=(image.width * scale, image.height * scale))
        return self.download(answer, source=image.size, scale=scale, budget=budget, key=key)

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
