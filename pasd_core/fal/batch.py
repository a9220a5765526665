"""A batch of images on fal-ai/pasd: a pool of request handles, at most `max_in_flight` in flight.

Each image runs end to end in a worker thread (`FalQueueClient.upscale`) under its own deadline;
the workers report through a queue, so every callback (`on_log`, `on_progress`, `should_stop`)
runs on the caller's thread. Results come back in input order; the first failure names its image
and cancels the others; `should_stop()` returning True cancels them all and raises `Interrupted`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from ..errors import Interrupted, PASDError
from ..params import REMOTE_PARAMS, fal_arguments, validate
from .client import FalQueueClient
from .errors import ENDPOINT, FalError
from .redact import excerpt, redact
from .transport import Budget, Stopped

logger = logging.getLogger(__name__)

PRICE_PER_MEGAPIXEL_USD = 0.03  # fal's listed price for fal-ai/pasd, per output megapixel
LOG_LINE_CHARS = 500


def estimated_cost_usd(sizes: Iterable[tuple[int, int]], scale: int) -> float:
    """What fal charges for upscaling images of these (width, height) sizes by `scale`."""
    megapixels = sum(w * scale * h * scale for w, h in sizes) / 1e6
    return megapixels * PRICE_PER_MEGAPIXEL_USD


def upscale_batch(client: FalQueueClient, images: Sequence[Image.Image], settings: Mapping[str, Any], *,
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
    key = client.resolve_key()
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
    pool = ThreadPoolExecutor(max_workers=min(client.max_in_flight, count), thread_name_prefix="fal-pasd")
    try:
        for index, image in enumerate(images):
            pool.submit(_run_one, client, index, count, image, arguments, key, stop, events)
        while finished < count:
            if should_stop is not None and not stop.is_set() and should_stop():
                interrupted = True
                stop.set()
            try:
                kind, *payload = events.get(timeout=client.poll_interval)
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


def _run_one(client: FalQueueClient, index: int, count: int, image: Image.Image, arguments: dict[str, Any],
             key: str, stop: threading.Event, events: queue.Queue) -> None:
    """Worker thread: one image end to end; reports through `events`, never raises."""
    label = f"image {index + 1} of {count}: " if count > 1 else ""

    def log(message: str) -> None:  # fal's log lines and our status words alike: key hidden, one line
        events.put(("log", f"{ENDPOINT}: {label}{excerpt(message, key, LOG_LINE_CHARS)}"))

    result, error = None, None
    try:
        budget = Budget(client.timeout, stop, on_retry=log, sleep=client.transport.sleep)
        budget.check("waiting for a free slot")
        result = client.upscale(image, arguments, key=key, budget=budget, log=log,
                                tick=lambda: events.put(("progress",)))
    except Stopped as exc:
        error = exc
    except FalError as exc:  # the last word on the key, whatever the message was built from
        error = FalError(redact(str(exc), key), status_code=exc.status_code)
    except Exception as exc:  # noqa: BLE001  # handed to the caller's thread, which raises it
        error = FalError(f"{ENDPOINT}: unexpected {type(exc).__name__}: {excerpt(str(exc), key)}")
    except BaseException as exc:  # noqa: BLE001
        error = exc
    events.put(("done", index, result, error))


def upscale_images(images: Sequence[Image.Image], settings: Mapping[str, Any] | None = None, *,
                   on_log: Callable[[str], None] | None = None, on_progress: Callable[[], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, **options: Any) -> list[Image.Image]:
    """One call for scripts: `upscale_images([Image.open("in.png")], {"scale": 4})`.

    `options` go to FalQueueClient (key, max_in_flight, timeout, ...); the key defaults to FAL_KEY.
    """
    return upscale_batch(FalQueueClient(**options), images, settings or {}, on_log=on_log, on_progress=on_progress,
                         should_stop=should_stop)
