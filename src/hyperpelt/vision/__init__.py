"""Images for vision-and-language tasks: feature extractors and the feature cache.

Features are extracted once (``hyperpelt features`` / ``extract_folder``) into a safetensors cache keyed by
image id; training reads them from the cache (``load_features``), never from the images. The names below
load their module (and torch) on first use, so the command line can import this package cheaply.
"""

from importlib import import_module

_WHERE = {"FeatureCache": "cache", "load_features": "cache", "save_features": "cache",
          "DEFAULT_EXTRACTOR": "extractors", "FeatureExtractor": "extractors",
          "extractor_names": "extractors", "get_extractor": "extractors", "register_extractor": "extractors",
          "extract_folder": "folder", "list_images": "folder", "easy_vqa_image_paths": "easyvqa"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
