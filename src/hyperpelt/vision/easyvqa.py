"""easy-VQA's images (PyPI package ``easy-vqa``): 4,000 train and 1,000 test 64x64 PNGs of simple shapes.

The package exposes ``get_train_image_paths()`` / ``get_test_image_paths()`` (dict int image id -> PNG
path), ``get_train_questions()`` / ``get_test_questions()`` (three parallel lists: question texts,
answers, int image ids; 38,575 and 9,673 questions) and ``get_answers()`` (the 13 answers). Train and
test ids both start at 0, so in a feature cache an image is keyed ``<split>/<id>`` (``image_key``): one
cache can hold both splits, and a V&L task reader maps a question's (split, image id) to the same key.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

SPLITS = ("train", "test")


def image_key(split: str, image_id: int) -> str:
    """The feature-cache id of easy-VQA image ``image_id`` of ``split``, e.g. ``train/12``."""
    return f"{split}/{image_id}"


def easy_vqa_image_paths(split: str | None = None) -> dict[str, Path]:
    """Image path by cache id (``image_key``) for one split, or for both when ``split`` is None."""
    import easy_vqa

    if split is not None and split not in SPLITS:
        raise UserError(f"unknown easy-vqa split '{split}'; known: {', '.join(SPLITS)}")
    readers = {"train": easy_vqa.get_train_image_paths, "test": easy_vqa.get_test_image_paths}
    return {image_key(name, image_id): Path(path)
            for name in ([split] if split else SPLITS)
            for image_id, path in sorted(readers[name]().items())}
