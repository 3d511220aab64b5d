"""The image features a model reads: its feature cache, checked against the method, and, at prediction
time, the features of image files named by raw inputs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from ..errors import UserError

FILE_KEY = "file:"  # image ids of files given with raw inputs


def check_feature_cache(method, cache) -> None:
    """A method that reads images needs a cache whose vectors have its ``feature_dim``; one line if not."""
    if not method.reads_images:
        return
    if cache is None:
        raise UserError(f"method '{method.name}' reads each example's image: set data.feature_cache to a "
                        f"feature cache (make one with 'hyperpelt features')")
    wanted = method.config.feature_dim
    if cache.dim != wanted:
        raise UserError(f"{cache.path}: feature cache made by {cache.describe()}, but method.feature_dim is "
                        f"{wanted}; set method.feature_dim: {cache.dim} or extract the images again")


class WithFiles(Mapping[str, torch.Tensor]):
    """A feature cache (or nothing) plus the features of image files, keyed ``file:<path>``."""

    def __init__(self, cache, files: dict[str, torch.Tensor]):
        self.cache, self.files = cache, files

    def __getitem__(self, image_id: str) -> torch.Tensor:
        if image_id in self.files:
            return self.files[image_id]
        if self.cache is None:
            raise UserError(f"image id '{image_id}': this model has no feature cache; give the image file "
                            f"as \"image\" instead")
        return self.cache[image_id]

    def __iter__(self) -> Iterator[str]:
        yield from self.files
        yield from self.cache or ()

    def __len__(self) -> int:
        return len(self.files) + len(self.cache or ())


def input_images(rows: list[dict], cache, extractor: str | None, reads_images: bool):
    """The features the raw inputs ``rows`` need: the cache, plus each file named by a row's "image"
    (extracted with the model's extractor; the row then points at it by "image_id")."""
    for i, row in enumerate(rows):
        if reads_images and "image" not in row and "image_id" not in row:
            raise UserError(f"input {i + 1}: this model reads images: give \"image\" (an image file) or "
                            f"\"image_id\" (an id in its feature cache) with the input, as a JSON object")
        if "image" not in row and "image_id" in row and cache is None:
            raise UserError(f"input {i + 1}: image id '{row['image_id']}': this model has no feature cache; "
                            f"give the image file as \"image\" instead")
    files = sorted({row["image"] for row in rows if "image" in row})
    if not files:
        return cache
    if extractor is None:
        raise UserError("this model was trained without image features; it takes no \"image\"")
    from .extractors import get_extractor
    from .folder import open_image

    features = get_extractor(extractor).extract([open_image(Path(f)) for f in files])
    for row in rows:
        if "image" in row:
            row["image_id"] = FILE_KEY + row["image"]
    return WithFiles(cache, {FILE_KEY + f: t for f, t in zip(files, features)})
