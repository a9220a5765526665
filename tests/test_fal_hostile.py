"""The fal client against a broken or hostile server (tests/support/fal_stub.py misbehaving on demand).

What a user must be able to count on, whatever the server does: the key is never shown and never
sent anywhere but the configured queue; a batch ends at its deadline or within a second of being
stopped; a huge or malicious answer is refused with a message, not a traceback; and a submit is
sent twice only where fal surely did not take the first one (each is billed).
"""

from __future__ import annotations

import base64
import logging
import struct
import time
import traceback
import zlib
from urllib.parse import quote

import pytest

from pasd_core.errors import Interrupted
from pasd_core.fal import FalError, FalQueueClient, upscale_batch
from support.fal_stub import FAKE_KEY, SECRET_PART, FalStub, Job, Reply, picture, wait_until

# the machine's own key, config file and fal URLs never reach these tests; `stub` is conftest's fal stub
pytestmark = pytest.mark.usefixtures("fal_env")


@pytest.fixture
def elsewhere():
    """Another server on this machine (another origin): nothing may reach it."""
    with FalStub() as server:
        yield server


def failure(client: FalQueueClient, **callbacks) -> FalError:
    with pytest.raises(FalError) as caught:
        upscale_batch(client, [picture()], {}, **callbacks)
    return caught.value


def shows_secret(text: str) -> bool:
    """Whether `text` holds any 8 characters in a row of the key's secret half."""
    secret, text = SECRET_PART.lower(), text.lower()
    return any(secret[i:i + 8] in text for i in range(len(secret) - 7))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels and holds almost none (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


# -- the key is never shown ----------------------------------------------------------------------

ECHO = f"Authorization: Key {FAKE_KEY}"
ECHOES = {
    "in a status log line": lambda stub: stub.push("status", Reply(200, {
        "status": "IN_PROGRESS", "logs": [{"message": ECHO, "timestamp": "1"}]})),
    "split over two log lines' text": lambda stub: stub.push("status", Reply(200, {
        "status": "IN_PROGRESS", "logs": [{"message": f"Key {FAKE_KEY[:32]}\n{FAKE_KEY[32:]}", "timestamp": "1"}]})),
    "in the COMPLETED error": lambda stub: setattr(stub, "plan", lambda i, im, b: Job(error=f"runner saw {ECHO}")),
    "as the status value": lambda stub: stub.push("status", Reply(200, {"status": FAKE_KEY})),
    "as its secret half alone": lambda stub: stub.push("submit", Reply(422, {"detail": f"{SECRET_PART} invalid"})),
    "URL-escaped": lambda stub: stub.push("submit", Reply(401, {"detail": quote(FAKE_KEY, safe="")})),
    "base64-encoded": lambda stub: stub.push("submit", Reply(403, {
        "detail": "Basic " + base64.b64encode(FAKE_KEY.encode()).decode()})),
    "JSON-escaped in a raw body": lambda stub: stub.push("submit", Reply(400, '{"auth": "' + FAKE_KEY + '"}')),
    "in a body cut through the key": lambda stub: stub.push("status", Reply(500, {"detail": "x" * 251 + ECHO}),
                                                             times=4),
    "cut off by the server": lambda stub: stub.push("submit", Reply(400, {"detail": "token " + FAKE_KEY[:34]})),
    "in an HTML answer": lambda stub: stub.push("status", Reply(200, f"<html>{ECHO}</html>")),
    "as the request id": lambda stub: stub.push("submit", Reply(200, {"request_id": SECRET_PART})),
    "in the result's URL": lambda stub: stub.push("result", Reply(200, {
        "images": [{"url": f"{stub.url}/files/{FAKE_KEY}.png"}]})),
}


@pytest.mark.parametrize("echo", list(ECHOES))
def test_the_key_is_hidden_whatever_the_server_echoes(stub, client, capsys, caplog, echo):
    caplog.set_level(logging.DEBUG)  # urllib3's request lines included
    ECHOES[echo](stub)
    lines: list[str] = []
    try:
        upscale_batch(client(), [picture()], {}, on_log=lines.append)
        shown = ""
    except FalError as error:
        shown = "".join(traceback.format_exception(error)) + repr(error.args)
    everything = "\n".join([shown, *lines, caplog.text, *capsys.readouterr()])
    assert not shows_secret(everything)
    assert "[FAL" in everything  # the echo did reach a message or a log, hidden


@pytest.mark.parametrize(("source", "key", "what"), [
    ("FAL_KEY", FAKE_KEY[:20] + "\n" + SECRET_PART, "a line break"),
    ("FAL_KEY", FAKE_KEY[:20] + " " + SECRET_PART, "whitespace"),
    ("FAL_KEY", FAKE_KEY + "é", "a non-ASCII character"),
    ("FAL_KEY_SECRET", SECRET_PART + "\x1b[2J", "a control character"),
    ("the key argument", FAKE_KEY[:30] + "\r" + FAKE_KEY[30:], "a line break"),
])
def test_a_key_that_cannot_go_into_a_header_is_refused_without_showing_it(stub, client, monkeypatch,
                                                                         source, key, what):
    options = {}
    if source == "the key argument":
        options["key"] = key
    elif source == "FAL_KEY_SECRET":
        monkeypatch.delenv("FAL_KEY")
        monkeypatch.setenv("FAL_KEY_ID", "pasd-test-key-7f3a9c")
        monkeypatch.setenv("FAL_KEY_SECRET", key)
    else:
        monkeypatch.setenv("FAL_KEY", key)
    message = "".join(traceback.format_exception(failure(client(**options))))
    assert what in message and source.split("_SECRET")[0] in message and "fal.ai/dashboard/keys" in message
    assert not shows_secret(message) and stub.recorded == []


def test_a_key_with_a_line_break_in_the_config_file_is_refused(stub, client, monkeypatch, tmp_path):
    config = tmp_path / "fal.json"
    config.write_text('{"fal_key": "' + FAKE_KEY[:25] + '\\n' + FAKE_KEY[25:] + '"}')
    monkeypatch.delenv("FAL_KEY")
    monkeypatch.setenv("PASD_FAL_CONFIG", str(config))
    message = str(failure(client()))
    assert "a line break" in message and str(config) in message and not shows_secret(message)
    assert stub.recorded == []


# -- the key goes only to the configured queue ---------------------------------------------------

@pytest.mark.parametrize("name", ["status_url", "response_url", "cancel_url"])
def test_a_url_on_another_host_gets_nothing_and_the_job_is_cancelled(stub, client, elsewhere, name):
    foreign = f"{elsewhere.url}/fal-ai/pasd/requests/stolen" + ("/status" if name == "status_url" else "")
    stub.plan = lambda index, image, body: Job(answer_urls={name: foreign})
    message = str(failure(client()))
    assert f"put its {name} at '{foreign}'" in message and stub.url in message and "FAL_QUEUE_URL" in message
    assert elsewhere.recorded == []
    assert stub.cancelled == list(stub.requests) and stub.calls("status") == []


def test_a_redirect_is_not_followed_with_the_key(stub, client, elsewhere):
    stub.push("status", Reply(307, "", {"Location": f"{elsewhere.url}/fal-ai/pasd/requests/x/status"}))
    message = str(failure(client()))
    assert "redirect (HTTP 307)" in message and "not followed" in message
    assert elsewhere.recorded == []


def test_result_files_and_signed_uploads_get_no_key(stub, client):
    upscale_batch(client(upload_threshold=10), [picture()], {})
    assert [r.route for r in stub.recorded if "authorization" not in r.headers] == ["upload", "file"]


@pytest.mark.parametrize(("setting", "url", "expected"), [
    ("FAL_QUEUE_URL", "http://queue.example.com", "is plain http"),
    ("FAL_REST_URL", "http://rest.example.com:8080/", "is plain http"),
    ("FAL_QUEUE_URL", "ftp://queue.example.com", "is not an http(s) URL"),
])
def test_a_configured_url_that_would_expose_the_key_is_refused(monkeypatch, setting, url, expected):
    monkeypatch.setenv(setting, url)
    with pytest.raises(FalError) as caught:
        FalQueueClient()
    assert setting in str(caught.value) and expected in str(caught.value) and "unset" in str(caught.value)


@pytest.mark.parametrize("queue_url", ["http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9",
                                       "https://queue.example.com"])
def test_https_and_this_machine_are_accepted(queue_url):
    assert FalQueueClient(queue_url=queue_url).queue_url == queue_url


@pytest.mark.parametrize(("route", "reply"), [
    ("initiate", Reply(200, {"upload_url": "http://uploads.example.com/x", "file_url": "https://f/x.png"})),
    ("result", Reply(200, {"images": [{"url": "http://files.example.com/out.png"}]})),
    ("result", Reply(200, {"images": [{"url": "file:///etc/passwd"}]})),
])
def test_data_urls_that_are_not_https_are_refused(stub, client, route, reply):
    stub.push(route, reply)
    message = str(failure(client(upload_threshold=10)))
    assert "which is not an https URL; refused" in message and "could not be reached" not in message


# -- one deadline per image, and stopping within a second -----------------------------------------

SLOW_STATUS = {"status": "IN_PROGRESS", "padding": "x" * 300}  # ~16 s at one byte every 0.05 s


@pytest.mark.parametrize("trickle_headers", [False, True], ids=["slow body", "slow headers"])
def test_an_answer_trickled_a_byte_at_a_time_ends_at_the_deadline(stub, client, trickle_headers):
    stub.push("status", Reply(200, SLOW_STATUS, trickle=0.05, trickle_headers=trickle_headers))
    started = time.monotonic()
    message = str(failure(client(timeout=1.0)))
    assert time.monotonic() - started < 2.5
    assert "Timed out after 1 s while waiting for fal-ai/pasd" in message
    assert wait_until(lambda: stub.cancelled == list(stub.requests))


def test_stopping_ends_a_batch_stuck_in_slow_answers_within_a_second(stub, client):
    stub.push("status", Reply(200, SLOW_STATUS, trickle=0.05), times=3)
    started = time.monotonic()
    with pytest.raises(Interrupted):
        upscale_batch(client(max_in_flight=3, timeout=60),
            [picture() for _ in range(3)], {}, should_stop=lambda: time.monotonic() - started > 0.3)
    assert time.monotonic() - started < 1.5
    assert len(stub.requests) == 3 and sorted(stub.cancelled) == sorted(stub.requests)


def test_ctrl_c_in_a_callback_ends_a_slow_batch_within_a_second(stub, client):
    stub.push("status", Reply(200, SLOW_STATUS, trickle=0.05), times=2)
    started = time.monotonic()

    def ctrl_c_after_a_moment() -> bool:
        if time.monotonic() - started > 0.3:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        upscale_batch(client(max_in_flight=2, timeout=60), [picture(), picture()], {},
                                                          should_stop=ctrl_c_after_a_moment)
    assert time.monotonic() - started < 1.5
    assert sorted(stub.cancelled) == sorted(stub.requests)


def test_a_submit_answered_just_after_a_stop_is_still_cancelled(stub, client):
    stub.plan = lambda index, image, body: Job(submit_delay=0.6)
    started = time.monotonic()
    with pytest.raises(Interrupted):
        upscale_batch(client(), [picture()], {}, should_stop=lambda: time.monotonic() - started > 0.2)
    assert len(stub.requests) == 1 and stub.cancelled == list(stub.requests) and stub.calls("status") == []


# -- sizes are checked before anything is decoded ------------------------------------------------

@pytest.mark.parametrize(("route", "reply", "expected"), [
    ("status", Reply(200, b" " * (20 * 2**20), gzip=True), "larger than 8.0 MiB"),  # 20 KiB on the wire
    ("file", Reply(200, b"\0" * (3 * 2**20)), "larger than 1.0 MiB"),
    ("file", Reply(200, b"\0" * (30 * 2**20), gzip=True), "larger than 1.0 MiB"),
    ("status", Reply(200, "[" * 100_000), "not JSON"),
])
def test_answers_too_large_or_too_deep_are_refused(stub, client, route, reply, expected):
    stub.push(route, reply)
    assert expected in str(failure(client()))


@pytest.mark.parametrize(("size", "expected"), [
    ((30_000, 30_000), "declares far more pixels than the expected 16x12 (a decompression bomb)"),
    ((4_000, 3_000), "returned a 4000x3000 image for a 8x6 input at scale 2; expected 16x12"),
])
def test_a_result_declaring_the_wrong_size_is_refused_before_decoding(stub, client, size, expected):
    stub.push("file", Reply(200, png_header(*size), {"Content-Type": "image/png"}))
    started = time.monotonic()
    error = failure(client())
    assert expected in str(error) and time.monotonic() - started < 2
    assert "DecompressionBombError" not in "".join(traceback.format_exception(error))


# -- a submit is sent again only where fal surely did not take it ---------------------------------

@pytest.mark.parametrize("reply", [
    Reply(500, {"detail": "Internal error"}),
    Reply(503, {"detail": "Runner unavailable"}, {"x-fal-request-id": "0b7c6a8e"}),
    Reply(drop=True),
], ids=["500", "503 from fal's servers", "connection dropped after sending"])
def test_a_submit_fal_may_have_taken_is_not_sent_again(stub, client, delays, reply):
    stub.push("submit", reply)
    error = failure(client())
    assert len(stub.calls("submit")) == 1 and delays == []
    if reply.drop:
        assert "was not sent again" in str(error)


def test_a_submit_that_timed_out_waiting_for_its_answer_is_not_sent_again(stub, client, delays):
    stub.plan = lambda index, image, body: Job(submit_delay=1.0)
    error = failure(client(http_timeout=0.3))
    assert "did not answer in time" in str(error) and "was not sent again" in str(error)
    assert len(stub.calls("submit")) == 1 and delays == []


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_submit_refused_by_fals_edge_proxy_is_sent_again(stub, client, delays, status):
    stub.push("submit", Reply(status, "<html>nginx</html>"), times=2)
    [result] = upscale_batch(client(), [picture()], {})
    assert result.size == (16, 12) and len(stub.calls("submit")) == 3 and len(delays) == 2
    assert len(stub.requests) == 1


def test_reads_are_retried_after_a_dropped_connection(stub, client, delays):
    stub.push("status", Reply(drop=True), Reply(500, "oops"))
    stub.push("file", Reply(drop=True))
    [result] = upscale_batch(client(), [picture()], {})
    assert result.size == (16, 12) and len(delays) == 3
