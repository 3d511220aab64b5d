"""The inference API: a finished run's config, its best checkpoint ready to answer, and its scores.

What `hyperpelt eval`, `predict` and `serve` and the experiments build on; nothing here trains.
"""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import write_text
from .config import RunConfig, load_config
from .errors import UserError
from .run_folders import finished_run


def run_config(run_dir: str | Path, overrides: list[str] = ()) -> RunConfig:
    """A finished run's resolved config, with overrides."""
    return load_config(finished_run(run_dir) / "config.yaml", list(overrides))


def check_trusted(run_dir: str | Path, config: RunConfig, meta: dict, trust_remote_code: bool) -> None:
    """Refuse a run whose model ships code of its own (model.trust_remote_code in its config or its best
    checkpoint) unless the caller trusts it: the folder's word alone never runs code."""
    if not trust_remote_code and (config.model.trust_remote_code or meta["model"].get("trust_remote_code")):
        raise UserError(f"{Path(run_dir)}: its model runs code it ships with it (model.trust_remote_code); "
                        f"pass --trust-remote-code if you trust that run folder")


def load_run(run_dir: str | Path, config: RunConfig | None = None, device=None, dtype=None,
             trust_remote_code: bool = False):
    """The best checkpoint of a finished run on its base model, ready for inference (with the image features
    of ``config``, by default the run's own, if it reads any); a best/ made for another model than the
    config's is refused.

    ``trust_remote_code`` is never read from the run folder: a run whose model ships code of its own
    (model.trust_remote_code) loads only when it is passed here (``--trust-remote-code``).

    ``dtype`` (float32, bfloat16, float16, or a torch dtype; default: the config's model.dtype) is the
    dtype the frozen host is loaded in; the trained weights stay float32. ``device`` (cpu, cuda, cuda:N,
    mps; default: cuda when available, else cpu) must exist here: checked before anything loads."""
    from .checkpoint import check_fits, load_checkpoint, read_checkpoint_config
    from .devices import dtype_name, resolve_device
    from .vision.cache import optional_features

    device, dtype = resolve_device(device), dtype_name(dtype)
    config = config or run_config(run_dir)
    best = finished_run(run_dir) / "best"
    meta = read_checkpoint_config(best)
    check_trusted(run_dir, config, meta, trust_remote_code)
    check_fits(meta, best, config.model, config.to_dict()["method"], config.data.tasks,
               str(Path(run_dir) / "config.yaml"))
    model = load_checkpoint(best, dtype=dtype or config.model.dtype, trust_remote_code=trust_remote_code)
    model = model.eval()
    model.use_feature_cache(optional_features(config.data.feature_cache))
    return model.to(device)


def evaluate_run(run_dir: str | Path, split: str, overrides: list[str] = (), other_images: bool = False,
                 device=None, dtype=None, trust_remote_code: bool = False) -> tuple[dict, Path]:
    """Score a finished run's best checkpoint on ``split``; writes (only) RUN_DIR/eval_<split>.json. With
    ``other_images``, every question is paired with another image of the split (``with_other_images``;
    written to eval_<split>_other_images.json, atomically): how much of the score the images carry.
    ``device``, ``dtype`` and ``trust_remote_code``: as ``load_run`` takes them."""
    from .data.batches import load_task_data, with_other_images
    from .evaluation.evaluator import evaluate

    config = run_config(run_dir, overrides)
    model = load_run(run_dir, config, device, dtype, trust_remote_code)
    data = load_task_data(model.tasks, model.encode, config.data)
    if other_images:
        for task_data in data:
            task_data.features[split] = with_other_images(task_data.features[split], config.data.split_seed)
    scores = evaluate(model.predict_features, data, split, config.train.eval_batch_size,
                      config.train.num_beams, config.eval.average)
    results = {**scores, "split": split, "average_kind": config.eval.average, "other_images": other_images,
               "device": str(model.device), "dtype": model.model_config.dtype}
    out = Path(run_dir) / f"eval_{split}{'_other_images' if other_images else ''}.json"
    write_text(out, json.dumps(results, indent=2))
    return results, out
