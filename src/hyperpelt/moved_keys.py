"""Config keys that moved to another section, so recipes and run folders written before still load."""

from __future__ import annotations

import warnings

from .errors import UserError

# Keys that moved to the heads section, (old section, old key) -> new key; run folders and recipes written
# before the move still load.
MOVED_KEYS = {
    ("model", "pair_encoding"): "pair_encoding", ("model", "pair_head"): "pair_head",
    ("model", "pooling"): "pooling", ("model", "normalize_pooled"): "normalize_pooled",
    ("train", "probe_heads"): "probe_examples", ("train", "probe_examples"): "probe_examples_by_task",
    ("train", "head_learning_rate"): "learning_rate", ("train", "balanced_classes"): "balanced_classes",
}


def move_old_keys(data: dict, warn: bool = True) -> dict:
    """Old head keys moved into ``heads`` (a FutureWarning names each where ``warn``: a recipe's author can
    update it; a checkpoint config's reader cannot), unless ``heads`` sets them too."""
    data = {name: dict(section) if isinstance(section, dict) else section for name, section in data.items()}
    for (section, old), new in MOVED_KEYS.items():
        if isinstance(data.get(section), dict) and old in data[section]:
            heads = data.setdefault("heads", {})
            if not isinstance(heads, dict) or new in heads:
                raise UserError(f"config key '{section}.{old}' is now 'heads.{new}'; give only the new one")
            heads[new] = data[section].pop(old)
            if warn:
                message = f"config key '{section}.{old}' is now 'heads.{new}'"
                warnings.warn(message, FutureWarning, stacklevel=3)
    return data
