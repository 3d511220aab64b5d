"""``hyperpelt serve``'s settings, and the engine of a run's best checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .engine import Engine


def load_engine(run_dir: Path, options) -> Engine:
    """The engine of a run's best checkpoint."""
    from ..inference import load_run, run_config
    from ..quiet import quiet_libraries

    quiet_libraries()
    return Engine(load_run(run_dir), run_config(run_dir).train.num_beams, options.image_dir)


@dataclass
class ServeOptions:
    """``hyperpelt serve``'s settings (see its --help)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 16
    max_batch_tokens: int = 4096
    max_wait_ms: float = 5.0
    batching: str = "mixed"
    max_queue: int = 256
    max_client_batch: int = 32
    request_timeout_s: float = 30.0
    shutdown_timeout_s: float = 30.0
    max_body_bytes: int = 16 * 2**20
    image_dir: str | None = None
    engine: str = "local"
    replicas: int = 1

    def batching_settings(self) -> dict:
        return {key: getattr(self, key) for key in ("batching", "max_batch_size", "max_batch_tokens",
                                                    "max_wait_ms", "max_queue", "max_client_batch",
                                                    "request_timeout_s")}
