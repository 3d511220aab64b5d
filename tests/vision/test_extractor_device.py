"""An extractor moved to a device makes its features there (a server moves it to the model's device)."""

import torch
from PIL import Image

from helpers.vl import QuarterColours


def test_an_extractor_moved_to_a_device_makes_its_features_there():
    images = [Image.new("RGB", (40, 32), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    here = QuarterColours("quarter-colours", batch_size=2)
    features = here.extract(images)
    assert features.device.type == "cpu" and features.dtype == torch.float32
    assert torch.allclose(features[0], torch.tensor([[1.0, 0.0, 0.0]] * 4))
    there = QuarterColours("quarter-colours", batch_size=2).to("meta")
    moved = there.extract(images)
    assert moved.device.type == "meta" and moved.shape == features.shape and moved.dtype == torch.float32
    assert here.to("cpu") is here and torch.equal(here.extract(images), features)


def test_an_extractor_moves_its_networks():
    extractor = QuarterColours("quarter-colours", batch_size=2)
    extractor.network = torch.nn.Linear(3, 3)
    extractor.to("meta")
    assert extractor.network.weight.device.type == "meta" and extractor.device == torch.device("meta")
