"""``Engine.prepare`` without a server: text bounded before tokenization, escaped echoes, and one
tokenizer per thread, so that the HTTP layer may prepare instances in a pool."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import build_model, examples, minilm_config
from hyperpelt.serving.engine import Engine, RequestError


@pytest.fixture(scope="module")
def model():
    return build_model(minilm_config(), tasks=("rte", "sst2"))


def instances() -> list[dict]:
    rte = [{"task": "rte", "sentence1": r["sentence1"], "sentence2": r["sentence2"]}
           for r in examples("rte", 16, "validation")]
    sst2 = [{"task": "sst2", "text": r["sentence"]} for r in examples("sst2", 16, "validation")]
    return [item for pair in zip(rte, sst2) for item in pair]


def test_prepares_from_four_threads_at_once_equal_the_sequential_ones_each_with_its_own_tokenizer(model):
    engine = Engine(model)
    sequential = [engine.prepare(instance, i) for i, instance in enumerate(instances())]
    start = threading.Barrier(4)

    def prepare_all(_):
        start.wait()  # all four tokenize at the same time
        return [engine.prepare(instance, i) for i, instance in enumerate(instances())], \
            id(engine.request_tokenizer)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(prepare_all, range(4)))
    for prepared, _ in results:
        assert [(p.task_id, p.feature, p.length) for p in prepared] == \
            [(p.task_id, p.feature, p.length) for p in sequential]
    tokenizers = {tokenizer for _, tokenizer in results}
    assert len(tokenizers) == 4 and id(engine.request_tokenizer) not in tokenizers


def refusal(engine, instance) -> RequestError:
    with pytest.raises(RequestError) as refused:
        engine.prepare(instance, 3)
    return refused.value


@pytest.mark.parametrize("instance, says", [
    ({"task": "sst2", "sentence": "a" * 11}, "field 'sentence' has 11 characters; at most 10"),
    ({"task": "rte", "sentence1": "short", "sentence2": "b" * 11}, "field 'sentence2' has 11"),
    ({"task": "rte", "text": "short\tlonger"}, "field 'text' has 12"),
])
def test_a_field_past_max_input_chars_is_refused_before_any_tokenization(model, monkeypatch, instance, says):
    engine = Engine(model, max_input_chars=10)
    accepted = {key: value[:10] if key != "task" else value for key, value in instance.items()}
    accepted = {**accepted, "text": "short\tlong"} if "text" in instance else accepted
    assert engine.prepare(accepted, 0).length > 0  # at the limit: answered as before
    monkeypatch.setattr(model, "encode", lambda *_: pytest.fail("tokenized"))
    err = refusal(engine, instance)
    assert (err.status, err.error_type, err.instance) == (413, "field_too_long", 3) and says in str(err)


def test_an_unknown_task_is_echoed_escaped_and_shortened(model):
    err = refusal(Engine(model), {"task": "\ud800" + "x" * 500, "sentence": "fine"})
    assert (err.status, err.error_type) == (422, "unknown_task")
    assert str(err).startswith("task '\\ud800xxx") and len(str(err)) < 200
    str(err).encode("utf-8")  # no lone surrogate left to break the JSON answer
