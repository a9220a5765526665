"""A stand-in for fal's queue API on 127.0.0.1, for tests and benchmarks; no network beyond loopback.

It speaks the protocol the client uses: `POST /fal-ai/pasd` answers request_id + status/response/
cancel URLs; the status URL walks IN_QUEUE (queue_position) -> IN_PROGRESS (logs, only with
`?logs=1`, accumulating as fal's do) -> COMPLETED; the response URL answers
`{"images": [{url, width, height, content_type, file_name, file_size}], "timings": {...}}` whose
URL this server also serves (a real PNG: the input resized by `scale`); `PUT .../cancel` answers
202 CANCELLATION_REQUESTED, or 400 ALREADY_COMPLETED once done. fal's storage upload
(`POST /storage/upload/initiate` then `PUT` to the signed URL) is there too.

Behaviour is chosen per test: `plan(index, image, body) -> Job` decides how each submitted request
behaves (index = submit order), and `push(route, Reply(...))` queues canned answers that win over
the normal ones, in order. Every request is recorded (method, path, query, headers, body).
It can also misbehave on demand, as a broken or hostile server would: a Reply can trickle its
headers or body a byte at a time, drop the connection without answering, or gzip its body; a Job
can name its status/response/cancel URLs anywhere.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import socket
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image

# The key the tests give the client and the stub; its secret half must never show either.
FAKE_KEY = "pasd-test-key-7f3a9c:SECRET-d41d8cd98f00b204"
SECRET_PART = "SECRET-d41d8cd98f00b204"

if TYPE_CHECKING:
    from typing import Self

ENDPOINT = "/fal-ai/pasd"
ALT_PREFIX = "/elsewhere"  # a Job.url_prefix the server also answers under


@dataclass
class Reply:
    """A canned answer: JSON for dicts and lists, raw bytes or text otherwise; sent after `delay` s."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    trickle: float = 0.0  # send the body one byte every `trickle` s (the headers too with trickle_headers)
    trickle_headers: bool = False
    drop: bool = False  # read the request, then close the connection without a word
    gzip: bool = False  # send the body gzip-compressed (Content-Encoding: gzip)


@dataclass
class Job:
    """How one submitted request behaves."""

    queue_positions: tuple[int, ...] = (1, 0)  # one IN_QUEUE poll per entry
    progress_polls: int = 2  # IN_PROGRESS polls, each adding one log line
    error: str | None = None  # COMPLETED with this error instead of a result
    output_size: tuple[int, int] | None = None  # default: input size times scale
    data_uri: bool = False  # give the result image as a data URI instead of a URL
    bare_submit: bool = False  # submit answer with request_id only (no URLs)
    status_delay: float = 0.0  # seconds before each status answer (a slow server)
    url_prefix: str = ""  # put status/response/cancel URLs under this path (served the same)
    run_seconds: float | None = None  # if set, also stay IN_PROGRESS until this long after submit
    answer_urls: dict[str, str] = field(default_factory=dict)  # replace status_url etc. in the submit answer
    submit_delay: float = 0.0  # seconds before the submit answer (the job exists already)


@dataclass
class Recorded:
    route: str  # submit, status, result, cancel, file, initiate, upload or unknown
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Request:
    request_id: str
    index: int
    job: Job
    image: Image.Image
    body: dict[str, Any]
    polls: int = 0
    logs: list[dict[str, str]] = field(default_factory=list)
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        if self.polls <= len(self.job.queue_positions) + self.job.progress_polls:
            return False
        return self.job.run_seconds is None or time.monotonic() - self.submitted_at >= self.job.run_seconds


class FalStub:
    """Start with `with FalStub() as stub:`; point the client at `stub.url`."""

    def __init__(self, *, key: str | None = None,
                 plan: Callable[[int, Image.Image, dict[str, Any]], Job] | None = None) -> None:
        self.key = key  # when set, queue and storage calls without `Key <key>` get 401
        self.plan = plan or (lambda index, image, body: Job())
        self.recorded: list[Recorded] = []
        self.cancelled: list[str] = []
        self.requests: dict[str, _Request] = {}
        self.files: dict[str, bytes] = {}
        self.service_seconds = 0.0  # time spent answering, summed over all requests (for benchmarks)
        self.answered = 0  # requests fully answered (service_seconds covers these)
        self._replies: dict[str, deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._server.stub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()  # cuts short any delayed answer
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def push(self, route: str, *replies: Reply, times: int = 1) -> None:
        """Queue canned answers for a route: submit, status, result, cancel, file, initiate, upload."""
        with self._lock:
            self._replies[route].extend(list(replies) * times)

    def clear_replies(self) -> None:
        with self._lock:
            self._replies.clear()

    def calls(self, route: str) -> list[Recorded]:
        return [r for r in self.recorded if r.route == route]

    # -- the protocol -----------------------------------------------------------------------------

    def answer(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes) -> Reply:
        route, request_id = _route(method, path.removeprefix(ALT_PREFIX))
        with self._lock:
            self.recorded.append(Recorded(route, method, path, query, headers, body))
            canned = self._replies[route].popleft() if self._replies[route] else None
            if route == "cancel" and request_id:
                self.cancelled.append(request_id)
        if canned is not None:
            return canned
        if route in ("submit", "status", "result", "cancel", "initiate") and self.key is not None \
                and headers.get("authorization") != f"Key {self.key}":
            return Reply(401, {"detail": "Invalid API key"})
        handler = getattr(self, f"_{route}", None)
        return handler(request_id, query, body) if handler else Reply(404, {"detail": "Not Found"})

    def _submit(self, _: str, __: dict, body: bytes) -> Reply:
        payload = json.loads(body)
        image = self._open(payload.get("image_url", ""))
        if image is None:
            return Reply(422, {"detail": [{"loc": ["body", "image_url"], "msg": "Could not load the image",
                                           "type": "image_load_error"}]})
        with self._lock:
            index = len(self.requests)
            request_id = str(uuid.uuid4())
            job = self.plan(index, image, payload)
            self.requests[request_id] = _Request(request_id, index, job, image, payload)
        base = f"{self.url}{job.url_prefix}{ENDPOINT}/requests/{request_id}"
        if job.bare_submit:
            return Reply(200, {"request_id": request_id})
        position = job.queue_positions[0] if job.queue_positions else 0
        return Reply(200, {"request_id": request_id, "response_url": base, "status_url": f"{base}/status",
                           "cancel_url": f"{base}/cancel", "queue_position": position, **job.answer_urls},
                     delay=job.submit_delay)

    def _status(self, request_id: str, query: dict, _: bytes) -> Reply:
        request = self.requests.get(request_id)
        if request is None:
            return Reply(404, {"detail": "Request not found"})
        self._closing.wait(request.job.status_delay)
        with self._lock:
            request.polls += 1
            step = request.polls - len(request.job.queue_positions)
            if 0 < step <= request.job.progress_polls:
                request.logs.append({"message": f"step {step} of {request.job.progress_polls}",
                                     "level": "INFO", "source": "user", "timestamp": f"2026-01-01T00:00:{step:02d}"})
            logs = list(request.logs) if query.get("logs") == ["1"] else None
        answer: dict[str, Any] = {"response_url": f"{self.url}{ENDPOINT}/requests/{request_id}", "logs": logs}
        if step <= 0:
            answer.update(status="IN_QUEUE", queue_position=request.job.queue_positions[request.polls - 1])
        elif not request.done:
            answer.update(status="IN_PROGRESS")
        else:
            answer.update(status="COMPLETED", metrics={"inference_time": 0.01})
            if request.job.error:
                answer.update(error=request.job.error, error_type="runner_error")
        return Reply(200, answer)

    def _result(self, request_id: str, _: dict, __: bytes) -> Reply:
        request = self.requests.get(request_id)
        if request is None:
            return Reply(404, {"detail": "Request not found"})
        if not request.done:
            return Reply(400, {"detail": "Request is still in progress"})
        scale = int(request.body.get("scale", 2))
        size = request.job.output_size or (request.image.width * scale, request.image.height * scale)
        png = _png(request.image.resize(size, Image.Resampling.NEAREST))
        name = f"{request_id}.png"
        self.files[name] = png
        url = f"data:image/png;base64,{base64.b64encode(png).decode()}" if request.job.data_uri \
            else f"{self.url}/files/{name}"
        return Reply(200, {"images": [{"url": url, "width": size[0], "height": size[1], "content_type": "image/png",
                                       "file_name": name, "file_size": len(png)}],
                           "timings": {"inference": 0.01}})

    def _cancel(self, request_id: str, _: dict, __: bytes) -> Reply:
        request = self.requests.get(request_id)
        if request is None:
            return Reply(404, {"status": "NOT_FOUND"})
        if request.done:
            return Reply(400, {"status": "ALREADY_COMPLETED"})
        request.cancelled = True
        return Reply(202, {"status": "CANCELLATION_REQUESTED"})

    def _file(self, name: str, _: dict, __: bytes) -> Reply:
        data = self.files.get(name)
        return Reply(200, data, {"Content-Type": "image/png"}) if data else Reply(404, "Not Found")

    def _initiate(self, _: str, __: dict, body: bytes) -> Reply:
        name = f"{uuid.uuid4().hex}-{json.loads(body)['file_name']}"
        return Reply(200, {"upload_url": f"{self.url}/uploads/{name}?signature=stub",
                           "file_url": f"{self.url}/files/{name}"})

    def _upload(self, name: str, _: dict, body: bytes) -> Reply:
        self.files[name] = body
        return Reply(200, b"")

    def _open(self, url: str) -> Image.Image | None:
        try:
            if url.startswith("data:image/png;base64,"):
                data = base64.b64decode(url.partition(",")[2])
            else:
                data = self.files[url.rsplit("/", 1)[-1]]
            with Image.open(io.BytesIO(data)) as image:
                return image.convert("RGB")
        except (KeyError, OSError, ValueError):
            return None


def _route(method: str, path: str) -> tuple[str, str]:
    """(route name, request id or file name) for a request line."""
    parts = path.strip("/").split("/")
    if method == "POST" and path == ENDPOINT:
        return "submit", ""
    if path.startswith(ENDPOINT + "/requests/") and len(parts) >= 4:
        suffix = parts[4] if len(parts) > 4 else ""
        return {("GET", ""): "result", ("GET", "status"): "status", ("PUT", "cancel"): "cancel"}.get(
            (method, suffix), "unknown"), parts[3]
    if method == "GET" and parts[0] == "files":
        return "file", parts[-1]
    if method == "POST" and path == "/storage/upload/initiate":
        return "initiate", ""
    if method == "PUT" and parts[0] == "uploads":
        return "upload", parts[-1]
    return "unknown", ""


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per answer and no Nagle: otherwise each keep-alive answer stalls ~40 ms on delayed ACKs.
    wbufsize = -1
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        stub: FalStub = self.server.stub  # type: ignore[attr-defined]
        started = time.perf_counter()
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = stub.answer(self.command, parts.path, parse_qs(parts.query), headers, body)
        if reply.delay:
            stub._closing.wait(reply.delay)
        if reply.drop:
            self.close_connection = True
            return
        if isinstance(reply.body, (dict, list)):
            data, kind = json.dumps(reply.body).encode(), "application/json"
        else:
            data = reply.body if isinstance(reply.body, bytes) else str(reply.body or "").encode()
            kind = "text/plain"
        headers_out = {"Content-Type": kind, **reply.headers}
        if reply.gzip:
            data = gzip.compress(data, compresslevel=9)
            headers_out["Content-Encoding"] = "gzip"
        headers_out["Content-Length"] = str(len(data))
        head = f"HTTP/1.1 {reply.status} {self.responses.get(reply.status, ('',))[0]}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers_out.items()) + "\r\n"
        try:
            if not reply.trickle:
                self.wfile.write(head.encode() + data)
                self.wfile.flush()
            else:
                slow = (head.encode() + data) if reply.trickle_headers else data
                if not reply.trickle_headers:
                    self.wfile.write(head.encode())
                self._trickle(slow, reply.trickle, stub._closing)
        except OSError:  # the client hung up first (it was cut short, or stopped): nothing to answer
            self.close_connection = True
        with stub._lock:
            stub.service_seconds += time.perf_counter() - started
            stub.answered += 1

    def _trickle(self, data: bytes, seconds: float, closing: threading.Event) -> None:
        """Send `data` one byte every `seconds`, until done, the client hangs up, or the stub closes."""
        self.close_connection = True
        for index in range(len(data)):
            self.wfile.write(data[index:index + 1])
            self.wfile.flush()
            if closing.wait(seconds):
                break

    do_GET = do_POST = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `condition` for up to `timeout` seconds (for assertions on the server's side)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# -- helpers for the tests that drive the client against this stub -------------------------------

def picture(width: int = 8, height: int = 6) -> Image.Image:
    """A small RGB picture whose pixels all differ, so a mix-up of images shows."""
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 30 % 256, y * 40 % 256, (x + y) * 10 % 256) for y in range(height) for x in range(width)])
    return image


def free_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
