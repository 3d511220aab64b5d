"""The access settings: where the API key comes from and which Host names a server answers to."""

import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from hyperpelt.errors import UserError  # noqa: E402
from hyperpelt.serving.access import LOOPBACK_NAMES, allowed_hosts, api_key  # noqa: E402
from hyperpelt.serving.body import parse_json, value_count  # noqa: E402
from hyperpelt.serving.engine import RequestError  # noqa: E402


def test_the_key_comes_from_the_file_else_the_environment(tmp_path):
    (tmp_path / "key").write_text("  abc-123\n")
    assert api_key(str(tmp_path / "key"), {"HYPERPELT_API_KEY": "other"}) == "abc-123"
    assert api_key(None, {"HYPERPELT_API_KEY": "from-env"}) == "from-env"
    assert api_key(None, {}) is None


@pytest.mark.parametrize("content, environ, says", [
    (None, {}, "cannot read"), ("\n \n", {}, "is empty"), ("two words", {}, "one word"),
    ("k\u00e9y", {}, "printable ASCII"), (False, {"HYPERPELT_API_KEY": " "}, "$HYPERPELT_API_KEY is empty")])
def test_a_key_that_cannot_be_used_is_a_user_error(tmp_path, content, environ, says):
    path = tmp_path / "key"
    if isinstance(content, str):
        path.write_text(content)
    with pytest.raises(UserError, match=says.replace("$", r"\$")):
        api_key(None if content is False else str(path), environ)


@pytest.mark.parametrize("allowed, bound_to, hosts", [
    (None, "127.0.0.1", list(LOOPBACK_NAMES)), (None, "::1", list(LOOPBACK_NAMES)),
    (None, "localhost", list(LOOPBACK_NAMES)), (None, "0.0.0.0", ["*"]), (None, "192.168.1.5", ["*"]),
    ("api.example.com, *.example.org", "127.0.0.1", ["api.example.com", "*.example.org"]),
    ("*", "127.0.0.1", ["*"])])
def test_allowed_hosts_default_to_the_loopback_names_on_loopback_only(allowed, bound_to, hosts):
    assert allowed_hosts(allowed, bound_to) == hosts


@pytest.mark.parametrize("body, error_type", [
    (b"[" * 5000, "too_deep"), (b"[NaN]", "invalid_json"), (b"[Infinity]", "invalid_json"),
    (b"[1e999]", "invalid_json"), ("[1]".encode("utf-16"), "invalid_json"),
    (b"\xef\xbb\xbf[1]", "invalid_json"), (b'["\xc3"]', "invalid_json")])
def test_json_a_client_must_not_send_is_400(body, error_type):
    with pytest.raises(RequestError) as refused:
        parse_json(body)
    assert refused.value.status == 400 and refused.value.error_type == error_type


def test_json_within_bounds_parses():
    assert parse_json('{"a": [1.5, -2, "é\\ud83d\\ude00"]}'.encode()) == {"a": [1.5, -2, "é\U0001f600"]}


XSS = "<img src=x onerror=alert(1)>"


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_the_playground_shows_html_in_labels_and_answers_as_text():
    """playground.js in node against a DOM whose elements refuse HTML: a task whose name and labels are
    HTML, and an answer that is, show as written."""
    task = {"name": XSS, "fields": ["sentence"], "shown_as": ["sentence"], "kind": "classification",
            "labels": [XSS, "b"], "metrics": ["accuracy"]}
    replies = {"/info": {"status": "ready", "model": XSS, "method": "m", "reads_images": False,
                         "batching": {"batching": "mixed"}},
               "/v1/tasks": {"tasks": [task]},
               "/v1/predict": {"predictions": [{"task": XSS, "label": XSS, "value": 0}]}}
    script = resources.files("hyperpelt.serving").joinpath("playground.js")
    shown = subprocess.run(["node", str(Path(__file__).with_name("playground_dom.js")), str(script),
                            json.dumps(replies)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    page = json.loads(shown.stdout)
    assert page["options"] == XSS and page["info"].startswith(XSS)
    assert page["listed"] == f"labels: {XSS}, b; metrics: accuracy"
    assert page["answer"].startswith(f"{XSS} | task {XSS}, value 0")


def test_a_body_of_too_many_values_is_413_before_it_is_parsed(monkeypatch):
    assert value_count(b'{"instances": [{"task": "a,b:c", "text": "x\\",y"}]}') == 5
    good = json.dumps({"instances": [{"task": "sst2", "sentence": "a, b: c"}] * 32}).encode()
    assert parse_json(good, 10_000)["instances"][31]["sentence"] == "a, b: c"
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(RequestError) as err:
        parse_json(b"[" + b"{}," * 200_000 + b"{}]", 10_000)
    assert (err.value.status, err.value.error_type) == (413, "too_many_values")
