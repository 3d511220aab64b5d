"""The HTTP API fuzzed (hypothesis over bodies, headers, methods and paths) against a real server in this
process, of a tiny MiniLM run of a pair, a one-text and a regression task, as tests/serving serves.

Every answer must come within ANSWER_S, below 500, with the security headers, and every 4xx as the one
JSON error body naming a real instance or none; afterwards /health answers within a second and a normal
request is answered. The server's limits are set low, so that generated bodies reach them cheaply.
Examples are derandomized (the same requests on every run) and counted: at least 500 per run."""

import http.client
import json
import string
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import train_run  # noqa: E402
from helpers.serving import RUN, TASKS, in_process_server  # noqa: E402

KEY = "fuzz-key_0123456789"
MAX_CHARS, MAX_BODY, MAX_INSTANCES = 300, 32 * 1024, 6
ANSWER_S = 10.0
STANDARD_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"]
UNREADABLE = b"Invalid HTTP request received."  # uvicorn's own answer to what its parser cannot read
SENT: dict[str, int] = {}  # requests sent, by test
RUNS = {"json_values": 150, "instances": 200, "raw_bodies": 100, "requests": 100}
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

VALID = [{"task": "sst2", "sentence": "a gripping, funny film"},
         {"task": "rte", "sentence1": "A man sleeps.", "sentence2": "A person rests."},
         {"task": "stsb", "sentence1": "A dog runs.", "sentence2": "A dog is running."},
         {"task": "stsb", "text": "A dog runs.\tA dog is running."},
         {"task": "sst2", "text": "dull"}]
ROUTES = ["/v1/predict", "/v1/tasks", "/health", "/ready", "/info", "/metrics", "/", "/playground.js",
          "/playground.css", "/favicon.ico"]
FIELDS = ["task", "sentence", "sentence1", "sentence2", "text", "question", "image", "image_path", "label"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    run_dir = train_run(folder, RUN)
    (folder / "key").write_text(KEY)
    limits = {"max_input_chars": MAX_CHARS, "max_body_bytes": MAX_BODY, "max_client_batch": MAX_INSTANCES}
    with in_process_server(run_dir, api_key_file=str(folder / "key"), max_wait_ms=1, **limits) as (_, url):
        yield url


def send(base: str, test: str, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None):
    """(status, body bytes, headers) of one request on a new connection; fails past ANSWER_S."""
    SENT[test] = SENT.get(test, 0) + 1
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=ANSWER_S)
    started = time.monotonic()
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    assert time.monotonic() - started < ANSWER_S, (method, path)
    return response.status, payload, response.headers


def post(base: str, test: str, body: bytes, content_type: str | None = "application/json"):
    headers = {"Authorization": f"Bearer {KEY}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return send(base, test, "POST", "/v1/predict", body, headers)


def check(answer, method: str = "POST", instances=None, readable: bool = True) -> dict | None:
    """The answer's JSON body after the checks every answer must pass (None for a HEAD's empty body).
    A request that is not ``readable`` HTTP (a method uvicorn's parser does not know, a DEL character in a
    header) never reaches the app: uvicorn answers it, in plain text."""
    status, payload, headers = answer
    assert status < 500, (status, payload[:300])
    if status == 400 and payload in (UNREADABLE, b"") and not readable:  # b"": HEAD reads no body
        return None
    assert headers["X-Content-Type-Options"] == "nosniff"
    if status < 400 or method == "HEAD":
        return None
    body = json.loads(payload)
    assert set(body) == {"error", "error_type", "instance"}, body
    assert isinstance(body["error"], str) and body["error"] and isinstance(body["error_type"], str), body
    count = len(instances) if isinstance(instances, list) else 0
    assert body["instance"] is None or 0 <= body["instance"] < count, body
    return body


def instances_in(value):
    return value.get("instances") if isinstance(value, dict) else None


# ------------------------------------------------------------------------------------------ strategies

def mostly(usual, rare, one_in: int = 5):
    """``usual``, and ``rare`` once in ``one_in`` draws."""
    return st.integers(0, one_in - 1).flatmap(lambda n: rare if n == one_in - 1 else usual)


SPECIAL = ["\ud800", "\udfff", "a\udc00b", "\0", "a\0b", "\t", "x\ty", "\ufeff", "", " ", "\u202e", "\r\n",
           "\U0001d54f", "é" * 3]
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=20) | st.sampled_from(SPECIAL)
LEAF = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
        | ANY_TEXT)
JSON = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner,
                                                                                       max_size=4),
                    max_leaves=12)
LONG = st.builds(lambda n, c: c * n,
                 st.sampled_from([MAX_CHARS - 1, MAX_CHARS, MAX_CHARS + 1, 4 * MAX_CHARS]),
                 st.sampled_from(["a", "é", "\U0001d54f", " ", "\t", "a\ud800"]))
SENTENCE = st.sampled_from(["a fine film", "A man sleeps.", "dull", "  padded  ", "x"])
TABBED = st.lists(SENTENCE | ANY_TEXT, min_size=1, max_size=4).map("\t".join)
FIELD_VALUE = mostly(SENTENCE | ANY_TEXT | LONG | TABBED, JSON)
ASCII_ONLY = mostly(st.just(True), st.just(False), 4)  # else lone surrogates are sent unescaped
TASK_VALUE = mostly(st.sampled_from([*TASKS, *TASKS, "", "SST2", "mnli", "\ud800", "sst2\0"]), LEAF)


@st.composite
def instances(draw) -> object:
    """A valid instance, one with a few keys set to anything or dropped, or any JSON value."""
    kind = draw(st.sampled_from(["valid", "valid", "changed", "changed", "changed", "json"]))
    if kind == "json":
        return draw(JSON)
    instance = dict(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3)) if kind == "changed" else 0):
        key = draw(st.sampled_from([*instance, *FIELDS]) | ANY_TEXT)
        if draw(st.integers(0, 3)) == 0:
            instance.pop(key, None)
        else:
            instance[key] = draw(TASK_VALUE if key == "task" else FIELD_VALUE)
    return instance


GOOD = json.dumps({"instances": VALID[:3]})
HUGE_NUMBERS = st.sampled_from([b"9" * 10, b"9" * 4300, b"9" * 4301, b"-" + b"9" * 6000, b"1e400",
                                b"-1e400", b"1e-400", b"NaN", b"Infinity", b"-Infinity", b"0x10", b"01"])
CONTENT_TYPES = st.sampled_from([None, "application/json", "application/json; charset=utf-8",
                                 "APPLICATION/JSON", "application/json; charset=utf-16", "text/plain", "",
                                 ";", "application/jsonx", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x"])


def json_bytes(value, ascii_only: bool) -> bytes:
    """``value`` as JSON text: escaped (a lone surrogate as \\ud800), or raw (it then encodes as bytes that
    are no UTF-8)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def raw_bodies(draw) -> bytes:
    """Bytes that are no JSON, or no UTF-8, or past a limit, or JSON only Python's parser takes."""
    good = draw(st.sampled_from([GOOD, json.dumps({"instances": [{"task": "sst2", "sentence": "é ü"}]})]))
    kind = draw(st.sampled_from(["binary", "truncated", "encoded", "corrupted", "number", "deep", "large"]))
    if kind == "binary":
        return draw(st.binary(max_size=300))
    if kind == "truncated":
        return good.encode()[:draw(st.integers(0, len(good) - 1))]
    if kind == "encoded":
        return good.encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "latin-1"])))
    if kind == "corrupted":
        at, data = draw(st.integers(0, len(good))), good.encode()
        return data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at + draw(st.integers(0, 2)):]
    if kind == "number":
        return b'{"instances": [{"task": "sst2", "sentence": "x", "n": ' + draw(HUGE_NUMBERS) + b"}]}"
    if kind == "deep":
        depth = draw(st.sampled_from([5000, 10, 900, 1000, MAX_BODY // 2 - 2, MAX_BODY]))
        opener = draw(st.sampled_from([b"[", b'{"a":']))
        return opener * depth + (b"]" if opener == b"[" else b"}") * depth
    return b" " * (MAX_BODY - len(good) + draw(st.integers(0, 2))) + good.encode()


ODD_PATHS = ["/v1/predict/", "/v1//predict", "//", "/v1/predict?x=1", "/%2e%2e/info", "/v1/%00", "/v1/%ff",
             "/health#x", "/docs", "/openapi.json", "/v1/tasks/../info", "/%zz", "/" + "a" * 5000]
PATHS = (st.sampled_from(ROUTES) | st.sampled_from(ODD_PATHS)
         | st.text(string.ascii_letters + string.digits + "-._~:/?#[]@!$&'()*+,;=%", max_size=40).map(
             "/{}".format))
METHODS = mostly(st.sampled_from(STANDARD_METHODS), st.text(string.ascii_letters, min_size=1, max_size=8))
# (not Content-Length nor Transfer-Encoding: a body shorter than announced waits for --body-timeout-s)
OTHER_HEADERS = ["Connection", "Expect", "Accept", "Accept-Encoding", "Content-Encoding", "Origin", "Cookie",
                 "X-Forwarded-For", "Range", "Upgrade", "Authorization", "Content-Type"]
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)  # as latin-1


# ------------------------------------------------------------------------------------------ fuzzing

@settings(FUZZ, max_examples=RUNS["json_values"])
@given(value=JSON | st.builds(lambda instances, rest: {**rest, "instances": instances}, JSON | st.lists(JSON),
                               st.dictionaries(ANY_TEXT, JSON, max_size=2)), ascii_only=ASCII_ONLY)
def test_any_json_value_as_a_body(base, value, ascii_only):
    check(post(base, "json_values", json_bytes(value, ascii_only)), instances=instances_in(value))


@settings(FUZZ, max_examples=RUNS["instances"])
@example(instances=[{"task": "sst2", "sentence": "\ud800"}], ascii_only=True)  # was a 500 (tokenizer)
@given(instances=mostly(st.lists(instances(), min_size=1, max_size=2),
                        st.lists(instances(), max_size=MAX_INSTANCES + 1), 3), ascii_only=ASCII_ONLY)
def test_instances_mixing_valid_tasks_and_garbage(base, instances, ascii_only):
    answer = post(base, "instances", json_bytes({"instances": instances}, ascii_only))
    body = check(answer, instances=instances)
    if answer[0] == 200:
        assert len(json.loads(answer[1])["predictions"]) == len(instances)
    if instances and all(i in VALID for i in instances) and len(instances) <= MAX_INSTANCES:
        assert answer[0] == 200 or not ascii_only and body["error_type"] == "invalid_json", body


@settings(FUZZ, max_examples=RUNS["raw_bodies"])
@given(body=raw_bodies(), content_type=mostly(st.just("application/json"), CONTENT_TYPES, 3))
def test_raw_bodies(base, body, content_type):
    try:
        instances = instances_in(json.loads(body))
    except (ValueError, RecursionError):
        instances = None
    check(post(base, "raw_bodies", body, content_type), instances=instances)


@settings(FUZZ, max_examples=RUNS["requests"])
@given(method=METHODS, path=PATHS, body=st.none() | st.just(GOOD.encode()) | st.binary(max_size=50),
       content_type=mostly(st.just("application/json"), CONTENT_TYPES | HEADER_TEXT, 3),
       key=mostly(st.just(KEY), st.sampled_from([None, "", "wrong", KEY + "x"]) | HEADER_TEXT),
       host=mostly(st.none(), st.sampled_from(["localhost", "[::1]:8000", "evil.example", ""]) | HEADER_TEXT),
       others=st.dictionaries(st.sampled_from(OTHER_HEADERS), HEADER_TEXT, max_size=3))
def test_any_method_path_and_headers(base, method, path, body, content_type, key, host, others):
    headers = {name: value for name, value in [("Content-Type", content_type), ("Host", host),
                                               ("Authorization", None if key is None else f"Bearer {key}")]
               if value is not None}
    headers.update(others)
    readable = method in STANDARD_METHODS and not any("\x7f" in value for value in headers.values())
    check(send(base, "requests", method, path, body, headers), method, readable=readable)


def test_the_server_is_alive_and_answers_after_the_fuzzing(base):
    started = time.monotonic()
    assert send(base, "after", "GET", "/health")[0] == 200
    assert time.monotonic() - started < 1.0
    status, payload, _ = post(base, "after", GOOD.encode())
    assert status == 200 and len(json.loads(payload)["predictions"]) == 3, payload
    if all(test in SENT for test in RUNS):  # the whole module ran
        assert sum(SENT[test] for test in RUNS) >= 500, SENT
