"""Hostile HTTP requests at the access layer of a real in-process server (a tiny MiniLM run): the API key,
the Host check, the body's media type, encoding, depth, size and pace, the security headers, and error
bodies that always encode. Each case also checks that the server answers a good request afterwards."""

import http.client
import json
import re
import time
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import train_run  # noqa: E402
from helpers.serving import chunked, in_process_server, raw_exchange  # noqa: E402

KEY = "s3cret-key_0123456789"
RUN = ["model.name=minilm-l6", "model.max_input_length=32", "method.prefix_length=4", "method.hyper_dim=16",
       "method.task_dim=16", "method.projector_hidden=32", "method.adapter_dim=8", "data.tasks=[sst2,rte]",
       "data.max_train_examples=16", "data.max_eval_examples=8", "train.steps=2", "train.eval_every=2",
       "train.batch_size=4", "train.eval_batch_size=8"]
GOOD = json.dumps({"instances": [{"task": "sst2", "sentence": "a fine film"}]}).encode()
BODY_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("access")
    run_dir = train_run(folder, RUN)
    (folder / "key").write_text(KEY + "\n")
    key_file = str(folder / "key")
    with in_process_server(run_dir, api_key_file=key_file, body_timeout_s=BODY_TIMEOUT_S) as served:
        yield served


def ask(base: str, path: str, body: bytes | None = None, key: str | None = KEY, method: str | None = None,
        content_type: str | None = "application/json", host: str | None = None):
    """(status, parsed JSON body or text, headers), with exactly the headers asked for."""
    address, port = base.removeprefix("http://").split(":")
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    if content_type is not None and body is not None:
        headers["Content-Type"] = content_type
    if host is not None:
        headers["Host"] = host
    connection = http.client.HTTPConnection(address, int(port), timeout=30)
    connection.request(method or ("GET" if body is None else "POST"), path, body, headers)
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    try:
        return response.status, json.loads(payload), response.headers
    except json.JSONDecodeError:
        return response.status, payload.decode(), response.headers


def head(path: str, headers: dict) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {KEY}",
             "Content-Type: application/json", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def declared_20_mb(base: str):
    """urllib (which asks for the connection to be closed) sending a 20 MB body: it reads the 413 only if
    the server reads the body before it answers."""
    request = urllib.request.Request(base + "/v1/predict", b"x" * 20_000_000, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {KEY}"})
    try:
        urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers
    raise AssertionError("a 20 MB body was accepted")


def surrogate(base: str):
    body = b'{"instances": [{"task": "sst\\ud800", "sentence": "a"}]}'
    return ask(base, "/v1/predict", body)


# (id, the request, its status, its error_type: None for a 200)
CASES = [
    ("predict_no_key", lambda b: ask(b, "/v1/predict", GOOD, key=None), 401, "unauthorized"),
    ("predict_wrong_key", lambda b: ask(b, "/v1/predict", GOOD, key="s3cret-key_0123456788"), 401,
     "unauthorized"),
    ("predict_right_key", lambda b: ask(b, "/v1/predict", GOOD), 200, None),
    ("info_no_key", lambda b: ask(b, "/info", key=None), 401, "unauthorized"),
    ("info_wrong_key", lambda b: ask(b, "/info", key="wrong"), 401, "unauthorized"),
    ("info_right_key", lambda b: ask(b, "/info"), 200, None),
    ("metrics_no_key", lambda b: ask(b, "/metrics", key=None), 401, "unauthorized"),
    ("metrics_non_ascii_key", lambda b: ask(b, "/metrics", key="s3cret-kéy"), 401, "unauthorized"),
    ("metrics_right_key", lambda b: ask(b, "/metrics"), 200, None),
    ("tasks_basic_scheme", lambda b: raw_exchange(
        b, b"GET /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic " + KEY.encode()
        + b"\r\nConnection: close\r\n\r\n"), 401, "unauthorized"),
    ("health_no_key", lambda b: ask(b, "/health", key=None), 200, None),
    ("ready_no_key", lambda b: ask(b, "/ready", key=None), 200, None),
    ("localhost_host", lambda b: ask(b, "/info", host="localhost:8000"), 200, None),
    ("ipv6_loopback_host", lambda b: ask(b, "/info", host="[::1]:8000"), 200, None),
    ("wrong_host", lambda b: ask(b, "/info", host="evil.example.com"), 400, "invalid_host"),
    ("wrong_host_no_key", lambda b: ask(b, "/health", key=None, host="rebound.example:8000"), 400,
     "invalid_host"),
    ("text_plain_post", lambda b: ask(b, "/v1/predict", GOOD, content_type="text/plain"), 415,
     "unsupported_media_type"),
    ("form_post", lambda b: ask(b, "/v1/predict", GOOD, content_type="application/x-www-form-urlencoded"),
     415, "unsupported_media_type"),
    ("no_content_type", lambda b: ask(b, "/v1/predict", GOOD, content_type=None), 415,
     "unsupported_media_type"),
    ("json_with_charset",
     lambda b: ask(b, "/v1/predict", GOOD, content_type="application/json; charset=utf-8"), 200, None),
    ("a_mib_of_empty_objects", lambda b: ask(b, "/v1/predict", b'{"instances": [' + b"{}," * 350_000
                                             + b"{}]}"), 413, "too_many_values"),
    ("deep_json_100000", lambda b: ask(b, "/v1/predict", b"[" * 100_000 + b"]" * 100_000), 400, "too_deep"),
    ("deep_json_in_a_field", lambda b: ask(b, "/v1/predict", b'{"instances": [{"task": "sst2", "sentence": '
                                           + b"[" * 900 + b"]" * 900 + b"}]}"), 400, "invalid_type"),
    ("nan", lambda b: ask(b, "/v1/predict", b'{"instances": [{"task": "sst2", "sentence": NaN}]}'), 400,
     "invalid_json"),
    ("minus_infinity", lambda b: ask(b, "/v1/predict", b'{"instances": -Infinity}'), 400, "invalid_json"),
    ("float_overflow", lambda b: ask(b, "/v1/predict", b'{"instances": [1e400]}'), 400, "invalid_json"),
    ("huge_integer", lambda b: ask(b, "/v1/predict", b'{"instances": [' + b"9" * 5000 + b"]}"), 400,
     "invalid_json"),
    ("utf16_body", lambda b: ask(b, "/v1/predict", GOOD.decode().encode("utf-16")), 400, "invalid_json"),
    ("utf16_no_bom", lambda b: ask(b, "/v1/predict", GOOD.decode().encode("utf-16-le")), 400,
     "invalid_json"),
    ("invalid_utf8",
     lambda b: ask(b, "/v1/predict", b'{"instances": [{"task": "sst2", "sentence": "\xff"}]}'), 400,
     "invalid_json"),
    ("chunked_over_limit", lambda b: raw_exchange(
        b, head("/v1/predict", {"Transfer-Encoding": "chunked"}), chunked(b" " * (17 * 2**20), 2**16)), 413,
     "body_too_large"),
    ("chunked_over_limit_close", lambda b: raw_exchange(
        b, head("/v1/predict", {"Transfer-Encoding": "chunked", "Connection": "close"}),
        chunked(b" " * (17 * 2**20), 2**16)), 413, "body_too_large"),
    ("slow_drip", lambda b: raw_exchange(b, head("/v1/predict", {"Content-Length": "1000"}), [b" "] * 1000,
                                         pause_s=0.2, timeout_s=BODY_TIMEOUT_S + 2), 408, "body_timeout"),
    ("declared_20_mb", declared_20_mb, 413, "body_too_large"),
    ("unknown_route", lambda b: ask(b, "/v2/anything"), 404, "http"),
    ("wrong_method", lambda b: ask(b, "/v1/predict"), 405, "http"),
    ("surrogate_in_message", surrogate, 422, "unknown_task"),
]


def still_answers(base: str):
    status, body, _ = ask(base, "/v1/predict", GOOD)
    assert status == 200 and body["predictions"][0]["label"] in ("negative", "positive"), body


@pytest.mark.parametrize("request_of, status, error_type", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_request_gets_its_status_and_the_server_keeps_answering(server, request_of, status,
                                                                        error_type):
    _, base = server
    got, body, headers = request_of(base)
    assert got == status, body
    if error_type is not None:
        assert set(body) == {"error", "error_type", "instance"} and body["error_type"] == error_type, body
    if status == 401:
        assert headers["WWW-Authenticate"] == "Bearer"
    assert headers["X-Content-Type-Options"] == "nosniff"
    still_answers(base)


def test_slow_drip_is_cut_within_the_body_timeout(server):
    _, base = server
    started = time.monotonic()
    status, body, headers = raw_exchange(base, head("/v1/predict", {"Content-Length": "1000"}), [b" "] * 1000,
                                         pause_s=0.2, timeout_s=BODY_TIMEOUT_S + 2)
    assert status == 408 and headers["Connection"] == "close"
    assert time.monotonic() - started < BODY_TIMEOUT_S + 2
    still_answers(base)


def test_a_lone_surrogate_is_escaped_in_the_message(server):
    _, base = server
    status, body, _ = surrogate(base)
    assert status == 422 and "sst\\ud800" in body["error"]


@pytest.mark.parametrize("path", ["/", "/playground.js", "/health", "/v2/nothing", "/info"])
def test_every_response_carries_the_security_headers(server, path):
    _, base = server
    _, _, headers = ask(base, path, key=None)
    assert headers["X-Content-Type-Options"] == "nosniff"
    policy = headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy


def test_the_playground_puts_server_text_in_the_page_as_text_only(server):
    """No inline script or style (the CSP would block them), and no HTML built from data: the JS never
    assigns innerHTML or outerHTML nor calls insertAdjacentHTML or document.write, so a label such as
    <img src=x onerror=alert(1)> is shown as that text."""
    _, base = server
    page = ask(base, "/", key=None)[1]
    script = ask(base, "/playground.js", key=None)[1]
    assert "<style" not in page and re.search(r"<script(?![^>]*\bsrc=)", page) is None and " on" not in page
    assert re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", script) is None
    assert "labels.join" in script and re.search(r'element\("span", "meta", labels', script)
    status, _, headers = ask(base, "/playground.js", key=None)
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")


def metric(base: str, labels: str) -> float:
    text = ask(base, "/metrics")[1]
    lines = [line for line in text.splitlines() if line.startswith("hyperpelt_responses_total{" + labels)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_every_error_is_counted_by_route_and_code_a_500_included(server, monkeypatch):
    service, base = server
    before = metric(base, 'code="401",route="/info"'), metric(base, 'code="500",route="/info"')
    ask(base, "/info", key=None)
    ask(base, "/no/such/route")
    monkeypatch.setattr(service, "info", lambda: 1 / 0)  # a fault of the server's own
    status, body, headers = ask(base, "/info")
    assert status == 500 and body["error_type"] == "internal"
    assert headers["X-Content-Type-Options"] == "nosniff"
    monkeypatch.undo()
    assert metric(base, 'code="401",route="/info"') == before[0] + 1
    assert metric(base, 'code="500",route="/info"') == before[1] + 1
    assert metric(base, 'code="404",route="other"') >= 1  # a route not served is "other": no new labels
    still_answers(base)


@pytest.mark.parametrize("key_file, says", [("missing", "cannot read the API key file"),
                                            ("empty", "is empty")])
def test_serve_with_a_key_file_it_cannot_use_is_one_line_and_exit_2(server, tmp_path, key_file, says,
                                                                   monkeypatch, capsys):
    from hyperpelt.cli import main
    from hyperpelt.serving.service import Service

    def loads(self):
        raise AssertionError("the model began to load")

    monkeypatch.setattr(Service, "start", loads)
    (tmp_path / "empty").write_text("\n")
    service, _ = server
    code = main(["serve", str(service.run_dir), "--port", "0", "--api-key-file", str(tmp_path / key_file)])
    err = capsys.readouterr().err
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1
