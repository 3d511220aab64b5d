"""Image features: the offline EfficientNet-Lite0 extractor, the safetensors cache, `hyperpelt features`."""

import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from helpers.cli import assert_user_error, hyperpelt
from hyperpelt.errors import UserError
from hyperpelt.vision import (
    FeatureExtractor,
    extract_folder,
    get_extractor,
    list_images,
    load_features,
    save_features,
)


@pytest.fixture(scope="module")
def extractor():
    return get_extractor("efficientnet-lite0", batch_size=2)


@pytest.fixture(scope="module")
def photos():
    """Two photos (scikit-learn's samples, downscaled) and a drawn image, of three different sizes."""
    china, flower = (Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg"))
    drawn = Image.new("RGB", (64, 48), (230, 230, 230))
    drawn.paste((200, 30, 30), (10, 10, 40, 30))
    return [china.resize((320, 240)), flower.resize((240, 180)), drawn]


@pytest.fixture
def folder(tmp_path, photos):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    photos[0].save(root / "china.jpg")
    photos[1].save(root / "sub" / "flower.jpeg")
    photos[2].save(root / "drawn.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_efficientnet_gives_a_7x7_grid_deterministically(extractor, photos):
    assert isinstance(extractor, FeatureExtractor)
    assert (extractor.name, extractor.grid, extractor.dim) == ("efficientnet-lite0", 49, 1280)
    features = extractor.extract(photos)
    assert features.shape == (3, 49, 1280) and features.dtype == torch.float32
    assert torch.isfinite(features).all() and not features.requires_grad
    assert torch.equal(features, extractor.extract(photos))  # same input, identical features
    assert torch.allclose(features[:1], extractor.extract(photos[:1]), atol=1e-4)  # batch-independent
    means = features.mean(1)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(means[i], means[j], atol=1e-2), (i, j)
    assert features.std(1).mean() > 0  # the cells of one image differ: a grid, not one vector repeated


def test_cache_round_trips_bit_for_bit(tmp_path, extractor, photos):
    features = dict(zip(["a", "dir/b", "c"], extractor.extract(photos)))
    path = save_features(tmp_path / "f.safetensors", features, extractor.name)
    cache = load_features(path, expected_extractor=extractor)
    assert (cache.extractor, cache.grid, cache.dim, len(cache)) == ("efficientnet-lite0", 49, 1280, 3)
    assert list(cache) == ["a", "c", "dir/b"] and "dir/b" in cache and "d" not in cache
    for image_id, tensor in features.items():
        assert torch.equal(cache[image_id], tensor)
    assert torch.equal(cache.stack(["c", "a"]), torch.stack([features["c"], features["a"]]))


def test_cache_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="missing.safetensors: feature cache not found"):
        load_features(tmp_path / "missing.safetensors")
    path = save_features(tmp_path / "other.safetensors", {"x": torch.zeros(50, 768)}, "clip:some/model")
    with pytest.raises(UserError) as err:
        load_features(path, expected_extractor="efficientnet-lite0")
    message = str(err.value)
    assert "\n" not in message and "other.safetensors" in message
    assert "'clip:some/model' (grid 50, dim 768)" in message and "'efficientnet-lite0'" in message
    with pytest.raises(UserError) as err:
        load_features(path)["train/7"]
    message = str(err.value)
    assert "\n" not in message and "'train/7'" in message and "other.safetensors" in message


def test_extract_folder_reuses_the_cache(tmp_path, folder):
    assert list(list_images(folder)) == ["china", "drawn", "sub/flower"]
    out, lines = tmp_path / "f.safetensors", []
    first = extract_folder(folder, out, batch_size=2, progress=False, log=lines.append)
    assert (first.total, first.reused, first.extracted) == (3, 0, 3)
    Image.new("RGB", (30, 30), (0, 0, 255)).save(folder / "blue.png")
    second = extract_folder(folder, out, batch_size=2, progress=False, log=lines.append)
    assert (second.total, second.reused, second.extracted) == (4, 3, 1)
    assert any("reusing 3 of 4" in line for line in lines)
    assert sorted(load_features(out)) == ["blue", "china", "drawn", "sub/flower"]


def test_image_list_file(tmp_path, folder):
    listing = tmp_path / "list.txt"
    listing.write_text(f"images/china.jpg\n\n{folder / 'drawn.png'}\n")
    images = list_images(listing)
    assert images["images/china"] == tmp_path / "images" / "china.jpg"
    assert images[(folder / "drawn").as_posix()] == folder / "drawn.png"
    listing.write_text("images/nope.jpg\n")
    with pytest.raises(UserError, match=r"list.txt:1: image not found"):
        list_images(listing)


def test_cli_extracts_once_then_reuses(tmp_path, folder):
    out = tmp_path / "features.safetensors"
    first = hyperpelt("features", folder, "--out", out, "--batch-size", "2")
    assert first.returncode == 0, first.stderr
    assert "extracting 3 images with efficientnet-lite0" in first.stdout
    assert f"written: {out} (3 images, grid 49, dim 1280)" in first.stdout
    second = hyperpelt("features", folder, "--out", out, "--quiet")
    assert second.returncode == 0, second.stderr
    assert "nothing to extract: all 3 images are already in" in second.stdout
    assert "extracting" not in second.stdout


def test_cli_undecodable_image_is_one_line(tmp_path, folder):
    bad = folder / "sub" / "broken.jpg"
    bad.write_bytes(b"\x00garbage, not a JPEG" * 10)
    out = tmp_path / "f.safetensors"
    assert_user_error(hyperpelt("features", folder, "--out", out, "--quiet", "--batch-size", "1"), str(bad),
                      "cannot decode image", f"the 2 images extracted before it are saved in {out}")
    assert sorted(load_features(out)) == ["china", "drawn"]  # sorted ids: sub/broken comes third


def test_cli_cache_of_another_extractor(tmp_path, folder):
    out = save_features(tmp_path / "f.safetensors", {"china": torch.zeros(49, 2048)}, "clip-rn101")
    result = hyperpelt("features", folder, "--out", out)
    assert_user_error(result, str(out), "'clip-rn101' (grid 49, dim 2048)", "'efficientnet-lite0'")


def test_clip_without_hub_fails_in_one_line(folder, tmp_path):
    result = hyperpelt("features", folder, "--out", tmp_path / "f.safetensors",
                       "--extractor", "clip:openai/clip-vit-base-patch32")
    assert_user_error(result, "cannot load CLIP model 'openai/clip-vit-base-patch32'")
    with pytest.raises(UserError) as err:
        get_extractor("clip-rn101")  # open_clip missing, or present but offline
    assert "\n" not in str(err.value) and "clip-rn101" in str(err.value)
    with pytest.raises(UserError, match="unknown feature extractor 'resnet'; known: clip-rn101"):
        get_extractor("resnet")


def test_clip_gives_its_patch_tokens(monkeypatch, photos):
    """The hub path, on a tiny random CLIP vision model standing in for the downloaded one."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, image_size=64, patch_size=16)
    load = classmethod(lambda cls, hub_id, **options: cls(config))
    monkeypatch.setattr(CLIPVisionModel, "from_pretrained", load)
    extractor = get_extractor("clip:tiny/clip", batch_size=2)
    assert (extractor.name, extractor.grid, extractor.dim) == ("clip:tiny/clip", 16, 32)
    assert extractor.extract(photos).shape == (3, 16, 32)


def test_easy_vqa_images():
    from hyperpelt.vision.easyvqa import easy_vqa_image_paths

    test = easy_vqa_image_paths("test")
    assert len(test) == 1000 and test["test/0"].name == "0.png" and test["test/0"].is_file()
    assert len(list_images("easy-vqa:train")) == 4000 and len(list_images("easy-vqa")) == 5000
    with pytest.raises(UserError, match="unknown easy-vqa split 'dev'"):
        list_images("easy-vqa:dev")


def test_a_registered_extractor_is_used_by_name(tmp_path, folder):
    from hyperpelt.vision.extractors import BatchedExtractor, register_extractor

    class MeanColour(BatchedExtractor):  # the example of docs/extending.md
        grid, dim, size = 4, 3, 64
        mean, std = (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)

        def features(self, pixels):
            return torch.nn.functional.adaptive_avg_pool2d(pixels, 2).flatten(2).transpose(1, 2)

    register_extractor("mean-colour", MeanColour)
    out = tmp_path / "f.safetensors"
    extract_folder(folder, out, "mean-colour", progress=False, log=lambda line: None)
    cache = load_features(out, get_extractor("mean-colour"))
    assert (cache.grid, cache.dim) == (4, 3)
    drawn = cache["drawn"]  # grey with a red rectangle: every cell in [0, 1], the top-left one reddish
    assert drawn.min() >= 0 and drawn.max() <= 1 and drawn[0, 0] > drawn[0, 1] + 0.1


def test_features_help_lists_the_command():
    result = hyperpelt("--help")
    assert result.returncode == 0 and "features" in result.stdout
