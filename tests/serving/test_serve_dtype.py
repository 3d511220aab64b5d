"""`hyperpelt serve --device/--dtype`: a float32 run served with its frozen host in bfloat16 or float16
answers what ``load_run`` in that dtype answers, and /info says where and in what dtype it runs."""

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import examples, train_run  # noqa: E402
from helpers.serving import call, in_process_server  # noqa: E402
from hyperpelt.inference import load_run  # noqa: E402

TASKS = ["rte", "sst2", "stsb"]
RUN = ["model.name=minilm-l6", "model.max_input_length=32", "method.prefix_length=4", "method.hyper_dim=16",
       "method.task_dim=16", "method.projector_hidden=32", "method.adapter_dim=8",
       f"data.tasks=[{','.join(TASKS)}]", "data.max_train_examples=16", "data.max_eval_examples=8",
       "train.steps=2", "train.eval_every=2", "train.batch_size=4", "heads.pair_encoding=separate",
       "heads.pair_head=alignment"]
FIELDS = ("sentence", "sentence1", "sentence2")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("served_dtype"), RUN)


def rows(task: str, n: int = 6) -> list[dict]:
    return [{k: row[k] for k in FIELDS if k in row} for row in examples(task, n, "validation")]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_served_answers_are_load_runs_in_that_dtype(run_dir, dtype):
    model = load_run(run_dir, device="cpu", dtype=dtype)
    with in_process_server(run_dir, device="cpu", dtype=dtype, batching="by-task") as (service, base):
        info = call(base + "/info")[1]
        assert (info["device"], info["dtype"]) == ("cpu", dtype)
        assert service.engine.model.model_config.dtype == dtype
        for task in TASKS:  # one request per task: the batch predict makes
            asked = [{"task": task, **row} for row in rows(task)]
            status, body, _ = call(base + "/v1/predict", {"instances": asked})
            assert status == 200, body
            expected = model.predict(task, rows(task))
            assert [p["label"] for p in body["predictions"]] == expected
            assert len(expected) == 6


def test_info_says_float32_on_the_cpu_by_default_here(run_dir, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with in_process_server(run_dir) as (_, base):
        info = call(base + "/info")[1]
    assert (info["device"], info["dtype"]) == ("cpu", "float32")
