"""The V&L fixture data, an open-answer easy-VQA task, a tiny V&L run, and drawn images with a feature
cache made by a registered toy extractor (importing this module registers it)."""

import torch
from PIL import Image

from conftest import ROOT
from hyperpelt.tasks import Task, load_task_splits
from hyperpelt.tasks.vl import QUESTION
from hyperpelt.tasks.vqa_metrics import vqa_score
from hyperpelt.vision import save_features
from hyperpelt.vision.extractors import BatchedExtractor, register_extractor

VL = ROOT / "tests" / "fixtures" / "vl"
# easy-VQA read as an open-answer task (its answers as text), so the answer head classifies over them
EASY_OPEN = Task("easy_vqa_open", QUESTION, None, (vqa_score,), kind="answer", reference_key="answers")
# VL-HyperPELT on the 3-d features of QuarterColours below
VL_METHOD = ["method.name=vl-hyperpelt", "method.feature_dim=3", "method.layer_block_embeddings=vectors"]


def train_vl(tmp_path, name, overrides):
    """A tiny MiniLM run on the V&L fixture data, trained in tmp_path/name: (its results, its folder)."""
    from hyperpelt import load_config, train
    from hyperpelt.run_folders import new_run_dir

    config = load_config(None, [
        "model.name=minilm-l6", "model.max_input_length=32", f"data.data_dir={VL}", "train.steps=2",
        "train.eval_every=2", "train.batch_size=2", "method.prefix_length=2", "method.hyper_dim=8",
        "method.task_dim=8", "method.projector_hidden=16", "method.adapter_dim=4",
        f"train.output_dir={tmp_path}", f"train.run_name={name}", *overrides,
    ])
    run_dir = new_run_dir(config, name)
    return train(config, run_dir, quiet=True), run_dir


class QuarterColours(BatchedExtractor):
    """Each quarter's mean colour: a 2x2 grid of 3-d vectors."""

    grid, dim, size = 4, 3, 32
    mean, std = (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)

    def features(self, pixels):
        return torch.nn.functional.adaptive_avg_pool2d(pixels, 2).flatten(2).transpose(1, 2)


register_extractor("quarter-colours", QuarterColours)


def draw_images(tmp_path):
    """Two drawn images and a feature cache of every easy-VQA image id, where train/0 is the red image."""
    paths = {}
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        image = Image.new("RGB", (64, 64), (240, 240, 240))
        image.paste(colour, (8, 8, 56, 56))
        paths[name] = tmp_path / f"{name}.png"
        image.save(paths[name])
    splits = load_task_splits("easy_vqa", data_dir=VL)
    rows = (row for split in (splits.train, splits.validation, splits.test) for row in split)
    ids = sorted({row["image_id"] for row in rows})
    extractor = QuarterColours("quarter-colours", batch_size=2)
    red, blue = extractor.extract([Image.open(paths["red"]), Image.open(paths["blue"])])
    features = {i: red if i == "train/0" else blue if n % 2 else torch.rand(4, 3) for n, i in enumerate(ids)}
    return paths, save_features(tmp_path / "feats.safetensors", features, "quarter-colours")
