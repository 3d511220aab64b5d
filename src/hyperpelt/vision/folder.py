"""Extract the features of a set of images into a cache, once: images already in the cache are reused.

A set of images (``list_images``) is a folder (every .jpg/.jpeg/.png under it; the id is the path relative
to the folder without its extension, with forward slashes), a text file listing image paths (one a line;
relative ones are read from the list's folder; the id is the path as written, without its extension), or
``easy-vqa``, ``easy-vqa:train``, ``easy-vqa:test`` (ids ``train/<n>``, ``test/<n>``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..textfiles import read_text
from .images import MAX_IMAGE_PIXELS, ImageRefused, decode_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _add(images: dict[str, Path], image_id: str, path: Path) -> None:
    if image_id in images:
        raise UserError(f"two images have the id '{image_id}': {images[image_id]} and {path}")
    images[image_id] = path


def list_images(source: str | Path) -> dict[str, Path]:
    """Image path by id, sorted by id."""
    text = str(source)
    if text == "easy-vqa" or text.startswith("easy-vqa:"):
        from .easyvqa import easy_vqa_image_paths

        return easy_vqa_image_paths(text.partition(":")[2] or None)
    root = Path(source)
    images: dict[str, Path] = {}
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                _add(images, path.relative_to(root).with_suffix("").as_posix(), path)
        if not images:
            raise UserError(f"{root}: no .jpg, .jpeg or .png images in this folder")
    elif root.is_file():
        for number, line in enumerate(read_text(root).split("\n"), 1):
            if line.strip():
                written = Path(line.strip())
                path = written if written.is_absolute() else root.parent / written
                if not path.is_file():
                    raise UserError(f"{root}:{number}: image not found: {path}")
                _add(images, written.with_suffix("").as_posix(), path)
        if not images:
            raise UserError(f"{root}: lists no images")
    else:
        raise UserError(f"{root}: no such folder or image list")
    return dict(sorted(images.items()))


def open_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS):
    """The decoded image, RGB; a one-line UserError naming the file when it is not a PNG, JPEG, WEBP, BMP or
    GIF image of at most ``max_pixels`` pixels, or cannot be decoded (see ``images.decode_image``)."""
    try:
        return decode_image(path, max_pixels)
    except ImageRefused as err:
        raise UserError(f"{path}: {err}") from None


@dataclass
class Extraction:
    path: Path
    total: int
    reused: int
    extracted: int


def extract_folder(images: str | Path, out: str | Path, extractor: str | None = None, batch_size: int = 32,
                   progress: bool = True, log: Callable[[str], None] = print) -> Extraction:
    """Write the features of every image of ``images`` (see ``list_images``) to the cache ``out``.

    An existing ``out`` must come from the same extractor; its images are kept and not extracted again.
    The features extracted before an undecodable image are saved before its error is raised.
    """
    from tqdm.auto import tqdm

    from .cache import load_features, save_features
    from .extractors import DEFAULT_EXTRACTOR, get_extractor

    name = extractor or DEFAULT_EXTRACTOR
    wanted = list_images(images)
    out = Path(out)
    old = load_features(out, name) if out.exists() else {}
    new_ids = [image_id for image_id in wanted if image_id not in old]
    reused = len(wanted) - len(new_ids)
    if not new_ids:
        log(f"nothing to extract: all {len(wanted)} images are already in {out}")
        return Extraction(out, len(wanted), reused, 0)
    if reused:
        log(f"reusing {reused} of {len(wanted)} images already in {out}; extracting only the new ones")
    extractor = get_extractor(name, batch_size)
    log(f"extracting {len(new_ids)} images with {name} (grid {extractor.grid}, dim {extractor.dim})")
    features: dict = {}

    def write():
        return save_features(out, {**{image_id: old[image_id] for image_id in old}, **features}, name)

    try:
        with tqdm(total=len(new_ids), desc="features", unit="img", disable=not progress) as bar:
            for start in range(0, len(new_ids), batch_size):
                ids = new_ids[start:start + batch_size]
                batch = extractor.extract([open_image(wanted[image_id]) for image_id in ids])
                features.update((image_id, row.clone()) for image_id, row in zip(ids, batch))
                bar.update(len(ids))
    except (UserError, KeyboardInterrupt) as err:
        if not features:
            raise
        write()  # keep what was extracted
        if isinstance(err, KeyboardInterrupt):
            raise
        raise UserError(f"{err}; the {len(features)} images extracted before it are saved in {out}") from None
    write()
    log(f"written: {out} ({len(old) + len(features)} images, grid {extractor.grid}, dim {extractor.dim})")
    return Extraction(out, len(wanted), reused, len(features))
