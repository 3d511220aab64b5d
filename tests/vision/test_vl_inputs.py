"""Images at the edges of a V&L run: the feature cache checked against the method, raw inputs with an image
file or an image id, the extractor kept in the checkpoint, and the answer head's probe start."""

import numpy as np
import pytest
import torch

from helpers.cli import assert_user_error, hyperpelt
from helpers.vl import EASY_OPEN, VL, VL_METHOD, train_vl
from hyperpelt.errors import UserError
from hyperpelt.heads import AnswerHead


def test_a_vl_run_predicts_from_an_image_file_or_an_image_id(tmp_path, drawn):
    from hyperpelt.checkpoint import load_checkpoint
    from hyperpelt.inference import load_run

    paths, cache = drawn
    overrides = ["data.tasks=[easy_vqa]", f"data.feature_cache={cache}", "data.max_train_examples=8",
                 "data.max_eval_examples=4", *VL_METHOD]
    _, run_dir = train_vl(tmp_path, "vl", overrides)
    model = load_run(run_dir)
    assert model.image_extractor == "quarter-colours"
    question = "what color is the shape?"
    by_file = model.predict("easy_vqa", [{"question": question, "image": str(paths["red"])},
                                         {"question": question, "image": str(paths["blue"])}])
    by_id = model.predict("easy_vqa", [f'{{"question": "{question}", "image_id": "train/0"}}'])
    assert by_file[0] == by_id[0] and all(isinstance(a, str) for a in by_file)
    rows = [{"question": question, "image_id": i, "label": 0} for i in ("train/0", "train/1")]
    from hyperpelt.heads.probe import head_features

    features = model.encode(model.tasks[0], rows)
    read = head_features(model.heads, model.collator, model.encode_batch, 0, features, 2)
    assert not torch.allclose(read[0], read[1])  # one question, two images: the head reads the image
    restored = load_checkpoint(run_dir / "best").eval()  # no feature cache: image files still work
    assert restored.image_extractor == "quarter-colours"
    assert restored.predict("easy_vqa", [{"question": question, "image": str(paths["red"])}]) == by_file[:1]
    with pytest.raises(UserError, match="input 1: this model reads images"):
        model.predict("easy_vqa", [question])
    with pytest.raises(UserError, match="this model has no feature cache"):
        restored.predict("easy_vqa", [{"question": question, "image_id": "train/0"}])


def test_a_vl_method_without_features_or_with_another_size_is_refused_in_one_line(tmp_path, drawn):
    _, cache = drawn
    base = ["train", "configs/demo.yaml", "data.tasks=[easy_vqa]", f"data.data_dir={VL}", "train.steps=1",
            f"train.output_dir={tmp_path / 'runs'}", "method.prefix_length=2", "heads.probe_examples=0",
            "heads.probe_examples_by_task={}", "heads.balanced_classes=[]"]
    result = hyperpelt(*base, *VL_METHOD)
    assert_user_error(result, "method 'vl-hyperpelt' reads each example's image", "data.feature_cache")
    result = hyperpelt(*base, *VL_METHOD, "method.feature_dim=5", f"data.feature_cache={cache}")
    assert_user_error(result, str(cache), "'quarter-colours' (grid 4, dim 3)", "method.feature_dim is 5")


def test_the_answer_probe_fits_the_answers_it_sees_and_ranks_the_others_last():
    rng = np.random.default_rng(0)
    head = AnswerHead(4, EASY_OPEN, ("a", "b", "c", "d", "e"))
    centres = np.eye(4) * 4
    y = np.array([0, 2, 3] * 40 + [-1] * 10)  # answers b and e unseen; -1: outside the vocabulary
    x = centres[np.where(y < 0, 1, y)] + rng.normal(size=(len(y), 4))
    accuracy = head.fit_probe(x, y, balanced=False, seed=0)
    assert accuracy > 0.9
    weight, bias = head.weight.detach().numpy(), head.bias.detach().numpy()
    assert not weight[[1, 4]].any() and bias[[1, 4]].max() < bias[[0, 2, 3]].min()
    predicted = head(torch.tensor(x[y >= 0], dtype=torch.float32))[1].numpy()
    assert (predicted == y[y >= 0]).mean() == pytest.approx(accuracy)
    untouched = AnswerHead(4, EASY_OPEN, ("a", "b"))
    before = untouched.weight.detach().clone()
    assert untouched.fit_probe(x[:5], np.zeros(5, dtype=int), balanced=False, seed=0) is None
    assert torch.equal(untouched.weight, before)
