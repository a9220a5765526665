"""The fal-ai/pasd client against a local stub of fal's queue API (tests/support/fal_stub.py); no network."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
import traceback

import pytest
from PIL import Image

from pasd_core.errors import Interrupted
from pasd_core.fal import (
    FalError,
    FalQueueClient,
    RetryPolicy,
    estimated_cost_usd,
    find_fal_key,
    upscale_batch,
    upscale_images,
)
from pasd_core.fal.errors import field_name
from pasd_core.fal.images import png_bytes, png_data_uri
from pasd_core.fal.transport import Budget
from pasd_core.params import REMOTE_PARAMS, ParamError, defaults
from support.fal_stub import ALT_PREFIX, FAKE_KEY, SECRET_PART, Job, Reply, free_port, picture, wait_until

# the machine's own key, config file and fal URLs never reach these tests; `stub` is conftest's fal stub
pytestmark = pytest.mark.usefixtures("fal_env")


def decode_data_uri(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2]))) as image:
        assert image.format == "PNG"
        return image.convert("RGB")


def failure(client: FalQueueClient, images=None, settings=None, **callbacks) -> FalError:
    with pytest.raises(FalError) as caught:
        upscale_batch(client, images or [picture()], settings or {}, **callbacks)
    return caught.value


# -- what is sent --------------------------------------------------------------------------------

def test_submit_body_is_the_image_and_the_table_defaults(stub, client):
    source = picture(8, 6)
    [result] = upscale_batch(client(), [source], {})

    [submit] = stub.calls("submit")
    body = submit.json()
    table = defaults(REMOTE_PARAMS)
    assert set(body) == {"image_url", *table}
    assert {name: body[name] for name in table} == table
    assert body["negative_prompt"].startswith("blurry, dirty, messy")
    assert decode_data_uri(body["image_url"]).tobytes() == source.tobytes()
    assert submit.headers["authorization"] == f"Key {FAKE_KEY}"
    assert submit.headers["content-type"] == "application/json"
    assert result.size == (16, 12)  # the table's default scale is 2


def test_submit_body_carries_overrides_with_the_table_types(stub, client):
    settings = {"scale": 4, "steps": "30", "guidance_scale": 5, "conditioning_scale": 0.7, "prompt": "a red fox",
                "negative_prompt": "cartoon"}
    [result] = upscale_batch(client(), [picture(5, 3)], settings)

    body = stub.calls("submit")[0].json()
    assert {k: body[k] for k in settings} == {"scale": 4, "steps": 30, "guidance_scale": 5.0,
                                                "conditioning_scale": 0.7, "prompt": "a red fox",
                                                "negative_prompt": "cartoon"}
    assert isinstance(body["guidance_scale"], float) and isinstance(body["steps"], int)
    assert result.size == (20, 12)


@pytest.mark.parametrize("settings", [{"scale": 9}, {"steps": 5}, {"seed": 3}, {"color_fix": "none"}])
def test_invalid_or_local_only_settings_fail_before_any_request(stub, client, settings):
    with pytest.raises(ParamError, match=next(iter(settings))):
        upscale_batch(client(), [picture()], settings)
    assert stub.recorded == []


def test_an_empty_batch_sends_nothing_and_needs_no_key(client):
    assert upscale_batch(client(), [], {}) == []


# -- the key -------------------------------------------------------------------------------------

def test_missing_key_fails_before_any_request_and_says_how_to_set_it(stub, client, monkeypatch):
    monkeypatch.delenv("FAL_KEY")
    error = failure(client())
    assert "FAL_KEY" in str(error) and "export FAL_KEY=" in str(error) and "fal.ai/dashboard/keys" in str(error)
    assert stub.recorded == []


def test_key_sources_in_order(tmp_path):
    config = tmp_path / "fal.json"
    config.write_text(json.dumps({"fal_key": "from-file"}))
    base = {"PASD_FAL_CONFIG": str(config)}
    assert find_fal_key(base) == "from-file"
    assert find_fal_key({**base, "FAL_KEY_ID": "id", "FAL_KEY_SECRET": "secret"}) == "id:secret"
    assert find_fal_key({**base, "FAL_KEY_ID": "id"}) == "from-file"  # half a pair is no key
    assert find_fal_key({**base, "FAL_KEY": " plain ", "FAL_KEY_ID": "id", "FAL_KEY_SECRET": "s"}) == "plain"


@pytest.mark.parametrize("content", ['{"fal_key": "' + FAKE_KEY + '"', '{"other": "' + FAKE_KEY + '"}', "[]"])
def test_a_broken_config_file_is_named_without_quoting_it(tmp_path, content):
    config = tmp_path / "fal.json"
    config.write_text(content)
    with pytest.raises(FalError) as caught:
        find_fal_key({"PASD_FAL_CONFIG": str(config)})
    assert str(config) in str(caught.value) and "fal_key" in str(caught.value)
    assert SECRET_PART not in "".join(traceback.format_exception(caught.value))


def test_the_key_never_leaks_into_errors_logs_or_output(stub, client, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []
    errors: list[BaseException] = []
    echo = {"detail": f"bad header Authorization: Key {FAKE_KEY}"}
    scenarios = [("submit", Reply(401, echo)), ("submit", Reply(403, echo)), ("submit", Reply(422, echo)),
                 ("submit", Reply(500, echo)), ("status", Reply(429, echo)), ("result", Reply(502, echo)),
                 ("submit", Reply(200, f"<html>{FAKE_KEY}</html>")), ("file", Reply(404, FAKE_KEY))]
    for route, reply in scenarios:
        stub.push(route, reply, times=4)
        try:  # two images, one at a time: the first fails, and the batch error wraps its message
            upscale_batch(client(max_in_flight=1), [picture(), picture(4, 4)], {}, on_log=messages.append)
        except FalError as exc:
            errors.append(exc)
        stub.clear_replies()
    closed = client(queue_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(FalError) as caught:
        upscale_batch(closed, [picture()], {})
    errors.append(caught.value)
    assert len(errors) == len(scenarios) + 1

    texts = ["".join(traceback.format_exception(e)) + repr(e) + repr(e.args) for e in errors]
    texts += messages + [caplog.text, *capsys.readouterr(), repr(client()), repr(client().handle("id", key=FAKE_KEY))]
    assert [t for t in texts if SECRET_PART in t] == []
    assert any("[FAL_KEY]" in t for t in texts)  # the echoed key was there, and was redacted
    assert all(str(e).startswith("image 1 of 2: ") for e in errors[:-1])


def test_results_are_downloaded_without_the_key(stub, client):
    upscale_batch(client(), [picture()], {})
    [download] = stub.calls("file")
    assert "authorization" not in download.headers


# -- the queue protocol --------------------------------------------------------------------------

def test_polls_with_logs_and_reports_each_log_line_once(stub, client):
    stub.plan = lambda index, image, body: Job(queue_positions=(2, 1, 0), progress_polls=3)
    messages: list[str] = []
    ticks: list[int] = []
    upscale_batch(client(), [picture()], {}, on_log=messages.append, on_progress=lambda: ticks.append(1))

    polls = stub.calls("status")
    assert len(polls) == 7 and all(p.query == {"logs": ["1"]} for p in polls)
    assert len(ticks) == len(polls)
    lines = [m.removeprefix("fal-ai/pasd: ") for m in messages[1:]]
    assert lines == ["in queue (position 2)", "in queue (position 1)", "in queue (position 0)", "in progress",
                     "step 1 of 3", "step 2 of 3", "step 3 of 3", "completed"]
    assert "output megapixels" in messages[0] and "$" in messages[0]


def test_uses_the_urls_fal_answers_and_builds_them_when_absent(stub, client):
    stub.plan = lambda index, image, body: Job(url_prefix=ALT_PREFIX) if index == 0 else Job(bare_submit=True)
    upscale_batch(client(max_in_flight=1), [picture(), picture()], {})

    first, second = stub.requests  # in submit order
    paths = [r.path for r in stub.recorded]
    assert f"{ALT_PREFIX}/fal-ai/pasd/requests/{first}/status" in paths
    assert f"{ALT_PREFIX}/fal-ai/pasd/requests/{first}" in paths
    assert f"/fal-ai/pasd/requests/{second}/status" in paths and f"/fal-ai/pasd/requests/{second}" in paths


def test_a_data_uri_result_is_decoded_without_a_download(stub, client):
    stub.plan = lambda index, image, body: Job(data_uri=True)
    [result] = upscale_batch(client(), [picture(3, 2)], {"scale": 3})
    assert result.size == (9, 6) and stub.calls("file") == []


def test_large_images_go_through_fal_storage(stub, client):
    source = picture(9, 7)
    [result] = upscale_batch(client(upload_threshold=10), [source], {})

    [initiate] = stub.calls("initiate")
    assert initiate.headers["authorization"] == f"Key {FAKE_KEY}"
    assert initiate.json() == {"content_type": "image/png", "file_name": "pasd-input.png"}
    [upload] = stub.calls("upload")
    assert "authorization" not in upload.headers and upload.headers["content-type"] == "image/png"
    image_url = stub.calls("submit")[0].json()["image_url"]
    assert image_url.startswith(stub.url + "/files/") and image_url.endswith("pasd-input.png")
    assert result.size == (18, 14)


def test_one_request_by_hand_through_its_handle(stub, client):
    fal = client()
    budget = Budget(10.0, threading.Event(), on_retry=lambda message: None)
    body = {"image_url": png_data_uri(png_bytes(picture(3, 2))), "scale": 2}
    request = fal.submit(body, key=FAKE_KEY, budget=budget)
    assert request.request_id in stub.requests and FAKE_KEY not in repr(request)
    lines: list[str] = []
    status = request.wait(budget, log=lines.append, tick=lambda: None)
    assert status["status"] == "COMPLETED" and "completed" in lines
    result = fal.download(request.result(budget, expected=(6, 4)), source=(3, 2), scale=2, budget=budget)
    assert result.size == (6, 4)
    assert request.status(budget)["status"] == "COMPLETED"


def test_cancel_of_a_finished_request_is_harmless(stub, client):
    upscale_batch(client(), [picture()], {})
    request_id = next(iter(stub.requests))
    client().handle(request_id, key=FAKE_KEY).cancel()
    assert stub.calls("cancel")[0].method == "PUT"  # fal answered 400 ALREADY_COMPLETED; nothing raised


# -- retries -------------------------------------------------------------------------------------

def test_429_is_retried_after_the_retry_after_seconds(stub, client, delays):
    stub.push("submit", Reply(429, {"detail": "Too many requests"}, {"Retry-After": "3"}), times=2)
    [result] = upscale_batch(client(), [picture()], {})
    assert len(stub.calls("submit")) == 3 and delays == [3.0, 3.0]
    assert result.size == (16, 12)


def test_5xx_and_connection_drops_are_retried_with_exponential_backoff(stub, client, delays):
    stub.push("status", Reply(503, "upstream unavailable"), Reply(500, {"detail": "oops"}), Reply(502, ""))
    upscale_batch(client(), [picture()], {})
    assert delays == [0.01, 0.02, 0.04]


def test_backoff_has_jitter_and_a_ceiling():
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, jitter=0.5)
    samples = [policy.delay(attempt, None) for attempt in (1, 2, 3, 4, 5, 6) for _ in range(50)]
    assert all(0.5 <= s <= 12.0 for s in samples) and len(set(samples)) > 100
    assert all(4.0 <= policy.delay(10, None) <= 12.0 for _ in range(50))
    assert policy.delay(3, 7.0) == 7.0  # Retry-After wins


def test_a_retry_after_beyond_the_timeout_is_not_waited_for(stub, client, delays):
    stub.push("submit", Reply(429, {"detail": "Slow down"}, {"Retry-After": "120"}))
    error = failure(client(timeout=5))
    assert "HTTP 429" in str(error) and "Slow down" in str(error)
    assert len(stub.calls("submit")) == 1 and delays == []


def test_429_after_all_retries(stub, client):
    stub.push("submit", Reply(429, {"detail": "Rate limit exceeded"}, {"Retry-After": "1"}), times=4)
    error = failure(client())
    assert "HTTP 429" in str(error) and "after 4 attempts" in str(error) and "Rate limit exceeded" in str(error)
    assert len(stub.calls("submit")) == 4 and error.status_code == 429


def test_5xx_after_all_retries_shows_fals_body_truncated(stub, client):
    stub.push("status", Reply(500, {"detail": "GPU fell over " + "x" * 2000}), times=4)
    error = failure(client())
    assert "HTTP 500" in str(error) and "after 4 attempts" in str(error) and "GPU fell over xxx" in str(error)
    assert "…" in str(error) and len(str(error)) < 600
    assert len(stub.calls("status")) == 4 and len(stub.calls("submit")) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_are_never_retried(stub, client, delays, status):
    stub.push("submit", Reply(status, {"detail": "no"}))
    error = failure(client())
    assert len(stub.calls("submit")) == 1 and delays == [] and error.status_code == status


def test_connection_errors_are_retried_then_reported(client, delays, monkeypatch):
    monkeypatch.setenv("FAL_KEY", FAKE_KEY)
    error = failure(client(queue_url=f"http://127.0.0.1:{free_port()}"))
    assert "could not be reached (4 attempts)" in str(error) and "internet connection" in str(error)
    assert len(delays) == 3


# -- error messages ------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_key_says_how_to_fix_it(stub, client, monkeypatch, status):
    if status == 401:
        monkeypatch.setenv("FAL_KEY", "wrong-key")  # the stub itself answers 401
    else:
        stub.push("submit", Reply(403, {"detail": "Forbidden"}))
    message = str(failure(client()))
    assert f"HTTP {status}" in message and "FAL_KEY" in message and "fal.ai/dashboard/keys" in message
    assert "wrong-key" not in message


@pytest.mark.parametrize("route", ["submit", "result"])
def test_422_names_our_parameters(stub, client, route):
    detail = [{"loc": ["body", "scale"], "msg": "Input should be less than or equal to 4", "type": "less_than_equal"},
              {"loc": ["body", "image_url"], "msg": "Could not download the file", "type": "file_download_error"}]
    stub.push(route, Reply(422, {"detail": detail}))
    error = failure(client())
    assert "HTTP 422" in str(error) and error.status_code == 422
    assert "scale: Input should be less than or equal to 4" in str(error)
    assert "image: Could not download the file" in str(error) and "image_url" not in str(error)


def test_field_names_from_pydantic_locations():
    assert field_name(["body", "guidance_scale"]) == "guidance_scale"
    assert field_name(["body", "image_url"]) == "image"
    assert field_name(["body"]) == "request" and field_name("prompt") == "prompt"


@pytest.mark.parametrize(("route", "reply", "expected"), [
    ("submit", Reply(200, "<html>gateway</html>", {"Content-Type": "text/html"}), "not JSON but text/html"),
    ("submit", Reply(200, {"status": "IN_QUEUE"}), "missing request_id"),
    ("submit", Reply(200, [1, 2]), "a JSON list instead of an object"),
    ("status", Reply(200, {"status": "SOMEWHERE"}), "unknown status 'SOMEWHERE'"),
    ("status", Reply(200, {"queue_position": 1}), "missing status"),
    ("result", Reply(200, {"images": [], "timings": {}}), "missing images"),
    ("result", Reply(200, {"images": [{"width": 16}]}), "no images[0].url"),
    ("result", Reply(200, {"images": [{"url": "data:image/png;base64,@@@"}]}), "not base64"),
])
def test_malformed_answers_are_named(stub, client, route, reply, expected):
    stub.push(route, reply)
    error = failure(client())
    assert expected in str(error) and "fal's answer to" in str(error)


def test_a_failed_download_is_reported(stub, client):
    stub.push("file", Reply(404, "No such file"))
    message = str(failure(client()))
    assert "Failed downloading the result image" in message and "HTTP 404" in message and "No such file" in message


def test_a_download_that_is_not_an_image_is_reported(stub, client):
    stub.push("file", Reply(200, b"definitely not a png"))
    assert "is not a readable image (20 bytes)" in str(failure(client()))


def test_a_result_of_the_wrong_size_is_reported(stub, client):
    stub.plan = lambda index, image, body: Job(output_size=(10, 10))
    message = str(failure(client()))
    assert "returned a 10x10 image for a 8x6 input at scale 2; expected 16x12" in message


def test_a_request_that_ends_in_error_is_reported(stub, client):
    stub.plan = lambda index, image, body: Job(error="CUDA out of memory")
    message = str(failure(client()))
    assert "failed on fal's side (runner_error): CUDA out of memory" in message
    assert stub.calls("result") == []


# -- time limits ---------------------------------------------------------------------------------

def test_the_total_timeout_cancels_a_request_stuck_in_the_queue(stub, client):
    stub.plan = lambda index, image, body: Job(queue_positions=(7,) * 500)
    started = time.monotonic()
    error = failure(client(timeout=0.3))
    assert time.monotonic() - started < 3
    assert "Timed out after 0.3 s while waiting for fal-ai/pasd" in str(error) and "last status IN_QUEUE" in str(error)
    assert stub.cancelled == list(stub.requests)


def test_a_slow_server_ends_in_a_timeout(stub, client):
    stub.plan = lambda index, image, body: Job(status_delay=2.0)
    started = time.monotonic()
    error = failure(client(timeout=0.6, http_timeout=0.2, retry=RetryPolicy(attempts=10, base_delay=0.01)))
    assert time.monotonic() - started < 3
    assert "did not answer in time" in str(error) or "Timed out after 0.6 s" in str(error)
    assert wait_until(lambda: stub.cancelled == list(stub.requests))


# -- batches -------------------------------------------------------------------------------------

def test_batch_results_keep_input_order_when_fal_finishes_out_of_order(stub, client):
    widths = [4, 5, 6, 7, 8]
    stub.plan = lambda index, image, body: Job(queue_positions=(), progress_polls=3 * (9 - image.width))
    results = upscale_batch(client(max_in_flight=5), [picture(w, 3) for w in widths], {"scale": 2})

    assert [r.size for r in results] == [(2 * w, 6) for w in widths]
    finished = [stub.requests[r.path.split("/")[-1].removesuffix(".png")].image.width for r in stub.calls("file")]
    assert finished == sorted(widths, reverse=True)  # fal finished the last image first


def test_max_in_flight_bounds_the_requests_running_at_once(stub, client):
    stub.plan = lambda index, image, body: Job(queue_positions=(0,), progress_polls=2)
    upscale_batch(client(max_in_flight=2), [picture() for _ in range(5)], {})

    running = peak = 0  # submitted and not yet downloaded, in the order the stub saw the calls
    for record in stub.recorded:
        running += {"submit": 1, "file": -1}.get(record.route, 0)
        peak = max(peak, running)
    assert peak == 2


def test_one_failure_fails_the_batch_names_the_image_and_cancels_the_others(stub, client):
    def plan(index, image, body):
        return Job(queue_positions=(), progress_polls=1, error="NSFW content") if image.width == 7 \
            else Job(queue_positions=(), progress_polls=1000)

    stub.plan = plan
    started = time.monotonic()
    error = failure(client(max_in_flight=5), [picture(w, 4) for w in (4, 5, 7, 8, 9)])
    assert time.monotonic() - started < 5
    assert str(error).startswith("image 3 of 5: fal-ai/pasd failed on fal's side") and "NSFW content" in str(error)
    failed = next(rid for rid, r in stub.requests.items() if r.image.width == 7)
    assert sorted(stub.cancelled) == sorted(set(stub.requests) - {failed})
    assert all(r.method == "PUT" for r in stub.calls("cancel")) and stub.calls("result") == []


def test_should_stop_cancels_every_request_in_flight(stub, client):
    stub.plan = lambda index, image, body: Job(queue_positions=(3, 2), progress_polls=1000)
    ticks: list[int] = []
    with pytest.raises(Interrupted):
        upscale_batch(client(max_in_flight=3), [picture() for _ in range(5)], {}, on_progress=lambda: ticks.append(1),
                                              should_stop=lambda: len(ticks) >= 9)
    assert len(stub.requests) == 3  # the two waiting for a slot were never sent
    assert sorted(stub.cancelled) == sorted(stub.requests) and stub.calls("result") == []


def test_an_exception_in_a_callback_still_cancels_the_requests(stub, client):
    stub.plan = lambda index, image, body: Job(queue_positions=(), progress_polls=1000)

    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upscale_batch(client(max_in_flight=2), [picture(), picture()], {}, on_progress=interrupt)
    assert stub.requests and sorted(stub.cancelled) == sorted(stub.requests)


def test_upscale_images_reads_the_environment(stub):
    stub.plan = lambda index, image, body: Job(queue_positions=(), progress_polls=0)
    [result] = upscale_images([picture(4, 4)], {"scale": 3})
    assert result.size == (12, 12)
    assert stub.calls("submit")[0].headers["authorization"] == f"Key {FAKE_KEY}"


def test_estimated_cost_is_per_output_megapixel():
    assert estimated_cost_usd([(500, 400), (100, 100)], 2) == pytest.approx((0.8 + 0.04) * 0.03)


def test_worker_threads_are_gone_after_a_batch(stub, client):
    before = threading.active_count()
    upscale_batch(client(), [picture(), picture()], {})
    assert wait_until(lambda: threading.active_count() <= before)
