"""Shared fixtures: tiny models, fixture examples, batches; the `requires_data` marker.

Every test reads the synthetic data in tests/fixtures/data (written by tests/fixtures/make_fixtures.py),
through $HYPERPELT_DATA_DIR, which this file points there for the test process and the CLI subprocesses
it starts; the library's default data dir and its local T5 tokenizer resolve there too. Tests of the
real files read REAL_DATA explicitly and are marked `requires_data`: they skip when it is missing.
"""

import os
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "data"
# The real data: $HYPERPELT_DATA_DIR as set before the tests, else ../shared/data next to the repository.
REAL_DATA = Path(os.environ.get("HYPERPELT_DATA_DIR") or ROOT.parent / "shared" / "data")
HAS_REAL_DATA = (REAL_DATA / "glue").is_dir()
REAL_DATA_REASON = "needs the real data files in ../shared/data (or $HYPERPELT_DATA_DIR)"

os.environ["HYPERPELT_DATA_DIR"] = str(FIXTURES)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# scripts/test.sh installs every extra first (scripts/setup.sh) and sets HYPERPELT_ALL_EXTRAS=1: there a
# missing extra is a broken setup, not a reason to skip (a CI pass then means the Ray and HTTP tests ran).
if os.environ.get("HYPERPELT_ALL_EXTRAS") == "1":
    import importlib

    def _import_or_fail(modname, minversion=None, reason=None, **_):
        return importlib.import_module(modname)

    pytest.importorskip = _import_or_fail

from hyperpelt.config import ModelConfig  # noqa: E402
from hyperpelt.tasks import get_task, load_task_splits  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if HAS_REAL_DATA:
        return
    skip = pytest.mark.skip(reason=REAL_DATA_REASON)
    for item in items:
        if item.get_closest_marker("requires_data") is not None:
            item.add_marker(skip)


# These models are tiny: one BLAS thread is faster than two, and does not collapse (100x) when another
# process is busy on the other core.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)

# Small method: short prefixes, small hypernetwork.
SMALL_METHOD = {"name": "hyperpelt", "prefix_length": 4, "hyper_dim": 16, "task_dim": 16,
                "projector_hidden": 32, "adapter_dim": 8}


def t5_config() -> ModelConfig:
    return ModelConfig(name="t5-tiny", pretrained=False, max_input_length=64, max_target_length=8)


def minilm_config() -> ModelConfig:
    return ModelConfig(name="minilm-l6", max_input_length=64)


@pytest.fixture(scope="session")
def tiny_t5_config() -> ModelConfig:
    return t5_config()


def build_model(model_config: ModelConfig, method_options: dict | None = None, tasks=("rte",), seed: int = 0,
                heads=None):
    """A TunedModel built right after ``torch.manual_seed(seed)`` (host first, then the method)."""
    from hyperpelt.model import TunedModel

    options = dict(SMALL_METHOD if method_options is None else method_options)
    torch.manual_seed(seed)
    model = TunedModel(model_config, options,
                       [get_task(t) if isinstance(t, str) else t for t in tasks], heads)
    return model.eval()


def train_run(folder: Path, overrides: list[str]) -> Path:
    """A finished run trained in ``folder`` (folder/run) from the library's defaults and ``overrides``."""
    from hyperpelt.config import load_config
    from hyperpelt.training import trainer

    config = load_config(None, [*overrides, f"train.output_dir={folder}", "train.run_name=run"])
    trainer.train(config, folder / "run", quiet=True)
    return folder / "run"


_EXAMPLES: dict = {}


def examples(task: str, n: int, split: str = "train", offset: int = 0) -> list[dict]:
    """The first ``n`` examples (after ``offset``) of a task's split, from the fixture data (cached)."""
    key = (task, split)
    if key not in _EXAMPLES:
        splits = load_task_splits(task, max_train=256, seed=42)
        _EXAMPLES[key] = splits[split]
    return _EXAMPLES[key][offset : offset + n]


def encode(model, task: str, rows: list[dict]) -> list[dict]:
    return model.encode(get_task(task), rows)


def task_batch(model, task: str, n: int, split: str = "train", offset: int = 0) -> dict:
    """A collated batch of the first ``n`` examples (after ``offset``) of one task's split."""
    feats = encode(model, task, examples(task, n, split, offset))
    return model.backbone.collate(feats, model.tokenizer)


def perturb(model, seed: int = 1, std: float = 0.05) -> None:
    """Move every method weight (including the zero-initialised adapter_up) away from its initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.method.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    model.method.weights_changed()


def train_steps(model, task_ids, batch, steps: int, lr: float) -> list[float]:
    """``steps`` AdamW steps on one batch (train mode, back to eval after); each step's loss, all finite."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(task_ids, **batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def free_port() -> int:
    """A loopback port free at the time of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def drawn(tmp_path):
    """Two drawn images and a feature cache of the V&L fixtures' easy-VQA images (helpers/vl.py)."""
    from helpers.vl import draw_images

    return draw_images(tmp_path)
