"""Open-answer heads on encoder backbones (VQA as classification over the training answers) and image
features in batches (data.image_features -> batch["image_features"] -> state.image_features)."""

import json

import pytest
import torch

from conftest import SMALL_METHOD, minilm_config, t5_config, train_steps
from helpers.vl import EASY_OPEN, VL, train_vl
from hyperpelt.checkpoint import CONFIG, load_checkpoint, save_checkpoint
from hyperpelt.errors import UserError
from hyperpelt.heads import AnswerHead, HeadsConfig
from hyperpelt.model import TunedModel
from hyperpelt.tasks import get_task, load_task_splits
from hyperpelt.tasks.vl import EASY_VQA_ANSWERS, answer_vocabulary
from hyperpelt.vision.cache import load_features, save_features


def easy_examples(n=8):
    """The first training examples of easy-VQA (the installed package's 38,575 when it is there)."""
    rows = load_task_splits("easy_vqa", data_dir=VL).train[:n]
    return [{**row, "label": EASY_VQA_ANSWERS[row["label"]]} for row in rows]


def answer_model(tasks, vocabularies, seed=0, model_config=None):
    torch.manual_seed(seed)
    return TunedModel(model_config or minilm_config(), dict(SMALL_METHOD), tasks, HeadsConfig(),
                      answer_vocabularies=vocabularies).eval()


def test_the_answer_head_learns_the_answers_and_predicts_their_text():
    rows = easy_examples()
    vocabulary = answer_vocabulary(rows)
    model = answer_model([EASY_OPEN], {"easy_vqa_open": vocabulary})
    head = model.heads.heads[0]
    assert isinstance(head, AnswerHead) and head.out_features == len(vocabulary)
    features = model.encode(EASY_OPEN, rows)
    assert [f["label"] for f in features] == [vocabulary.index(r["label"]) for r in rows]  # indices, not text
    batch = model.collator(features, [0] * len(rows))
    task_ids = batch.pop("task_ids")
    losses = train_steps(model, task_ids, batch, 30, lr=3e-3)
    assert losses[-1] < 0.2 * losses[0], losses
    predictions = model.predict_batch(task_ids, **batch)
    assert predictions == [r["label"] for r in rows]  # answer texts, from the vocabulary
    assert model.predict("easy_vqa_open", [rows[0]["question"]]) == [rows[0]["label"]]


def test_an_answer_outside_the_vocabulary_gets_no_loss():
    head = AnswerHead(4, EASY_OPEN, ("yes", "no"))
    features = torch.randn(3, 4)
    losses, _ = head(features, torch.tensor([0.0, -1.0, 1.0]))
    logits = torch.nn.Linear.forward(head, features)
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 1]), reduction="none")
    assert losses[1].item() == 0.0
    assert losses[[0, 2]].tolist() == pytest.approx(expected[[0, 2]].tolist(), rel=1e-5)
    model = answer_model([get_task("vqa")], {"vqa": ["yes", "2"]})
    assert [f["label"] for f in model.encode(get_task("vqa"), [
        {"question": "q", "label": "Two"}, {"question": "q", "label": "net"}])] == [1, -1]


def test_an_encoder_needs_the_vocabulary_of_its_answer_tasks():
    with pytest.raises(UserError, match="task 'vqa' answers in free text: an encoder's answer head needs"):
        answer_model([get_task("vqa")], None)
    with pytest.raises(UserError, match="task 'coco' answers in free text"):
        answer_model([get_task("coco")], {})


def test_checkpoint_keeps_the_vocabulary_and_reproduces_the_predictions(tmp_path):
    vqa = get_task("vqa")
    rows = load_task_splits("vqa", data_dir=VL).train
    model = answer_model([vqa], {"vqa": answer_vocabulary(rows)}, seed=3)
    before = model.predict_features(0, model.encode(vqa, rows))
    folder = save_checkpoint(model, tmp_path / "ck", seed=3)
    assert json.loads((folder / CONFIG).read_text())["answer_vocabularies"] == {"vqa": ["2", "net", "yes"]}
    loaded = load_checkpoint(folder).eval()
    assert loaded.answer_vocabularies == model.answer_vocabularies
    assert loaded.predict_features(0, loaded.encode(vqa, rows)) == before
    assert set(before) <= {"2", "net", "yes"}


def test_an_encoder_trains_on_vqa_and_load_run_reproduces_its_scores(tmp_path):
    from hyperpelt.inference import evaluate_run, load_run

    with pytest.raises(UserError, match="task 'vqa': no training answer is seen 2 times"):
        train_vl(tmp_path, "none", ["data.tasks=[vqa]", "heads.answer_min_count=2"])  # each is seen once
    results, run_dir = train_vl(tmp_path, "vqa", ["data.tasks=[vqa]"])
    meta = json.loads((run_dir / "best" / CONFIG).read_text())
    assert meta["answer_vocabularies"] == {"vqa": ["2", "net", "yes"]}  # the train split's answers
    model, again = load_run(run_dir), load_run(run_dir)
    questions = ["What is it?", "How many?"]
    assert set(model.predict("vqa", questions)) <= {"2", "net", "yes"}
    assert model.predict("vqa", questions) == again.predict("vqa", questions)
    scores, _ = evaluate_run(run_dir, "test")
    assert scores["tasks"]["vqa"]["score"] == pytest.approx(results["tasks"]["vqa"]["score"])


# ------------------------------------------------------------------------------------------ image features


def _cache(tmp_path, skip=()):
    ids = {row["image_id"] for split in ("train", "validation", "test")
           for row in getattr(load_task_splits("easy_vqa", data_dir=VL), split)}
    torch.manual_seed(0)
    features = {i: torch.randn(4, 8) for i in sorted(ids) if i not in skip}
    return save_features(tmp_path / "feats.safetensors", features, "test-extractor")


def test_batches_carry_image_features_that_the_method_sees_during_a_forward_only(tmp_path):
    rows = easy_examples()
    model = answer_model([EASY_OPEN], {"easy_vqa_open": answer_vocabulary(rows)})
    model.feature_cache = cache = load_features(_cache(tmp_path))
    batch = model.collator(model.encode(EASY_OPEN, rows), [0] * len(rows))
    assert batch["image_features"].shape == (len(rows), 4, 8)
    assert torch.equal(batch["image_features"][1], cache[rows[1]["image_id"]])
    seen = []

    def spy(module, args, kwargs):
        seen.append((model.state.image_features, set(kwargs)))

    handle = model.host.register_forward_pre_hook(spy, with_kwargs=True)
    task_ids = batch.pop("task_ids")
    model(task_ids, **batch)
    model.predict_batch(task_ids, **batch)
    handle.remove()
    assert len(seen) == 2 and all(state is batch["image_features"] for state, _ in seen)
    assert all("image_features" not in kwargs for _, kwargs in seen)  # the host never receives them
    assert model.state.image_features is None


def test_a_missing_image_id_is_a_one_line_error_naming_it_and_the_file(tmp_path):
    rows = easy_examples()
    model = answer_model([EASY_OPEN], {"easy_vqa_open": answer_vocabulary(rows)})
    model.feature_cache = load_features(_cache(tmp_path, skip={rows[0]["image_id"]}))
    with pytest.raises(UserError) as err:
        model.collator(model.encode(EASY_OPEN, rows), [0] * len(rows))
    message = str(err.value)
    assert f"image id '{rows[0]['image_id']}'" in message and "feats.safetensors" in message
    assert "\n" not in message


def test_a_run_with_image_features_trains(tmp_path):
    path = _cache(tmp_path)
    results, _ = train_vl(tmp_path, "easy", ["data.tasks=[easy_vqa]", f"data.feature_cache={path}",
                                             "data.max_train_examples=8", "data.max_eval_examples=4"])
    assert 0.0 <= results["tasks"]["easy_vqa"]["score"] <= 100.0


def test_a_text_to_text_model_takes_image_features_and_still_generates_answers(tmp_path):
    vqa = get_task("vqa")
    model = answer_model([vqa], {"vqa": ["yes"]}, model_config=t5_config())
    assert model.answer_vocabularies == {} and model.heads is None  # T5 generates the answer text
    rows = load_task_splits("vqa", data_dir=VL).train
    batch = model.collator(model.encode(vqa, rows), [0] * len(rows))
    task_ids = batch.pop("task_ids")
    image_features = torch.randn(len(rows), 4, 8)
    assert model(task_ids, image_features=image_features, **batch)["loss"].isfinite()
    predictions = model.predict_batch(task_ids, image_features=image_features, **batch)
    assert all(isinstance(p, str) for p in predictions) and model.state.image_features is None
