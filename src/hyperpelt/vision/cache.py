"""The feature cache: one safetensors file holding every image's features, keyed by image id.

Format: one float32 tensor ``[grid, dim]`` per image, stored under the image id as its key (a path-like
string such as ``train/12`` or ``photos/cat``), and the file's metadata::

    format     hyperpelt-image-features/1
    extractor  the extractor's registry name, e.g. efficientnet-lite0
    grid       vectors per image, e.g. 49
    dim        width of each vector, e.g. 1280

One tensor per id (rather than one stacked tensor) lets a reader load only the images it asks for: the
file is memory-mapped and each tensor is read on first access, so a cache larger than memory still works.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import UserError

FORMAT = "hyperpelt-image-features/1"


class FeatureCache(Mapping[str, torch.Tensor]):
    """A read-only mapping image id -> float32 ``[grid, dim]``, read lazily from one cache file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: feature cache not found (make it with 'hyperpelt features')")
        try:
            self._file = safe_open(str(self.path), framework="pt")
            meta = self._file.metadata() or {}
        except (SafetensorError, OSError) as err:
            raise UserError(f"{self.path}: not a readable safetensors file ({err})") from None
        if meta.get("format") != FORMAT:
            raise UserError(f"{self.path}: not a hyperpelt feature cache (no '{FORMAT}' metadata)")
        self.extractor, self.grid, self.dim = meta["extractor"], int(meta["grid"]), int(meta["dim"])
        self._ids = sorted(self._file.keys())  # iteration order: sorted ids
        self._known = set(self._ids)

    def describe(self) -> str:
        return f"'{self.extractor}' (grid {self.grid}, dim {self.dim})"

    def __getitem__(self, image_id: str) -> torch.Tensor:
        if image_id not in self._known:
            raise UserError(f"image id '{image_id}' is not in the feature cache {self.path} "
                            f"({len(self)} images); extract it with 'hyperpelt features'")
        return self._file.get_tensor(image_id)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def stack(self, image_ids: Iterable[str]) -> torch.Tensor:
        """Features of several images as one batch, ``[n, grid, dim]``."""
        rows = [self[image_id] for image_id in image_ids]
        return torch.stack(rows) if rows else torch.empty(0, self.grid, self.dim)


def load_features(path: str | Path, expected_extractor=None) -> FeatureCache:
    """Open a cache; ``expected_extractor`` (a name, or a ``FeatureExtractor`` whose grid and dim are then
    checked too) makes a cache made by another extractor an error naming both."""
    cache = FeatureCache(path)
    if expected_extractor is None:
        return cache
    if isinstance(expected_extractor, str):
        same, wanted = cache.extractor == expected_extractor, f"'{expected_extractor}'"
    else:
        e = expected_extractor
        same = (cache.extractor, cache.grid, cache.dim) == (e.name, e.grid, e.dim)
        wanted = f"'{e.name}' (grid {e.grid}, dim {e.dim})"
    if not same:
        raise UserError(f"{cache.path}: feature cache made by {cache.describe()}, but {wanted} is expected; "
                        "extract the images again into another file")
    return cache


def optional_features(path: str | Path | None) -> FeatureCache | None:
    """The cache at ``path`` (a run's ``data.feature_cache``), or None for a run that reads no images."""
    return None if path is None else load_features(path)


def save_features(path: str | Path, features: Mapping[str, torch.Tensor], extractor: str) -> Path:
    """Write ``features`` (id -> ``[grid, dim]``, every one the same shape) as a cache made by ``extractor``.

    The file is written beside its destination and then renamed over it, so a reader never sees half a file.
    """
    path = Path(path)
    shapes = {tuple(t.shape) for t in features.values()}
    if len(shapes) > 1 or any(len(s) != 2 for s in shapes):
        raise ValueError(f"features must all be [grid, dim], got shapes {sorted(shapes)}")
    grid, dim = shapes.pop() if shapes else (0, 0)
    tensors = {image_id: _own(t) for image_id, t in features.items()}
    meta = {"format": FORMAT, "extractor": extractor, "grid": str(grid), "dim": str(dim)}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=meta)
    os.chmod(partial, 0o644)  # safetensors creates it owner-only
    os.replace(partial, path)
    return path


def _own(tensor: torch.Tensor) -> torch.Tensor:
    """CPU float32 and contiguous, in storage of its own (safetensors refuses views sharing one)."""
    tensor = tensor.detach().to("cpu", torch.float32).contiguous()
    return tensor if tensor.untyped_storage().nbytes() == tensor.nbytes else tensor.clone()
