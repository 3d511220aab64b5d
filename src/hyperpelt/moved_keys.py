"""Config keys that moved to another section, so recipes and run folders written before still load."""

from __future__ import annotations

import warnings

from .errors import UserError

# Keys that moved or were renamed, (old section, old key) -> "new section.new key"; run folders and recipes
# written before still load.
MOVED_KEYS = {
    ("model", "pair_encoding"): "heads.pair_encoding", ("model", "pair_head"): "heads.pair_head",
    ("model", "pooling"): "heads.pooling", ("model", "normalize_pooled"): "heads.normalize_pooled",
    ("train", "probe_heads"): "heads.probe_examples",
    ("train", "probe_examples"): "heads.probe_examples_by_task",
    ("train", "head_learning_rate"): "heads.learning_rate",
    ("train", "balanced_classes"): "heads.balanced_classes",
    ("data", "image_features"): "data.feature_cache",
}


def move_old_keys(data: dict, warn: bool = True) -> dict:
    """Old keys moved to their new place (a FutureWarning names each where ``warn``: a recipe's author can
    update it; a checkpoint config's reader cannot), unless the new key is set too. An old key that is null
    (the default, as old run folders' config.yaml write data.image_features) is dropped without a word."""
    data = {name: dict(section) if isinstance(section, dict) else section for name, section in data.items()}
    for (section, old), moved in MOVED_KEYS.items():
        if isinstance(data.get(section), dict) and old in data[section] and data[section][old] is None:
            del data[section][old]
        elif isinstance(data.get(section), dict) and old in data[section]:
            target, new = moved.split(".")
            into = data.setdefault(target, {})
            if not isinstance(into, dict) or new in into:
                raise UserError(f"config key '{section}.{old}' is now '{moved}'; give only the new one")
            into[new] = data[section].pop(old)
            if warn:
                warnings.warn(f"config key '{section}.{old}' is now '{moved}'", FutureWarning, stacklevel=3)
    return data
