"""``hyperpelt serve``'s settings, and the engine of a run's best checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..arguments import (
    DEVICE_HELP,
    DTYPE_HELP,
    Dtype,
    non_negative_float,
    option,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:  # the engine loads torch, which the CLI's parser (reading ServeOptions) must not
    from .engine import Engine


def load_engine(run_dir: Path, options) -> Engine:
    """The engine of a run's best checkpoint, on ``options.device`` in ``options.dtype``, serving the ready
    tasks of its task store (``options.task_store``, by default beside the run; created on first use)."""
    from ..inference import load_run, run_config
    from ..quiet import quiet_libraries
    from .engine import Engine
    from .served_tasks import fail_interrupted, open_run_store

    quiet_libraries()
    model = load_run(run_dir, device=options.device, dtype=options.dtype,
                     trust_remote_code=options.trust_remote_code)
    store = open_run_store(options.task_store, Path(run_dir), model)
    fail_interrupted(store)
    return Engine(model, run_config(run_dir).train.num_beams, options.image_dir,
                  max_input_chars=options.max_input_chars, max_image_pixels=options.max_image_pixels,
                  store=store, weight_cache_bytes=int(options.weight_cache_mb * 2**20))


@dataclass
class ServeOptions:
    """``hyperpelt serve``'s settings; its command-line options are derived from these fields."""

    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8000, "port; 0: any free port")
    max_batch_size: int = option(16, "instances per forward", positive_int)
    max_batch_tokens: int = option(4096, "instances x longest input per forward", positive_int)
    max_wait_ms: float = option(5.0, "how long a batch waits for more after its first instance",
                                non_negative_float)
    batching: Literal["mixed", "by-task", "off"] = option(
        "mixed", "mixed: any tasks share a batch; by-task: one task per batch; off: one instance")
    max_queue: int = option(256, "instances waiting before 429", positive_int)
    max_client_batch: int = option(32, "instances per request before 413", positive_int)
    max_body_bytes: int = option(16 * 2**20, "largest request body before 413", positive_int, "16 MiB")
    max_input_chars: int = option(20_000, "characters per text field before 413", positive_int)
    max_image_pixels: int = option(4096 * 4096, "pixels per image before 422 (read from its header)",
                                   positive_int, "4096x4096")
    request_timeout_s: float = option(30.0, "a request not answered by then gets 504", positive_float)
    limit_concurrency: int = option(128, "predict requests at once before 503 (the probes never count)",
                                    positive_int)
    keep_alive_timeout_s: float = option(5.0, "an idle keep-alive connection is closed after this",
                                         positive_float)
    prepare_workers: int = option(1, "threads that check, tokenize and decode requests' instances",
                                  positive_int)
    shutdown_timeout_s: float = option(30.0, "time to answer accepted requests after SIGTERM",
                                       positive_float)
    image_dir: str | None = option(None, "the folder image_path may name files in (VL runs)")
    api_key_file: str | None = option(None, "a file holding the key that requests (but /health and /ready) "
                                      "send as 'Authorization: Bearer KEY'",
                                      shown="$HYPERPELT_API_KEY if set, else no key")
    allowed_hosts: str | None = option(None, "Host names to answer, separated by commas ('*': any)",
                                       shown="the loopback names when --host is loopback, else any")
    body_timeout_s: float = option(10.0, "a body not fully received by then gets 408", positive_float)
    device: str | None = option(None, DEVICE_HELP[0], shown=DEVICE_HELP[1])
    dtype: Dtype | None = option(None, DTYPE_HELP[0], shown=DTYPE_HELP[1])
    engine: Literal["local", "ray"] = option(
        "local", "local: one process; ray: Ray Serve replicas (pip install -e '.[ray]')")
    replicas: int = option(1, "Ray Serve replicas", positive_int)
    task_store: str | None = option(None, "the task store (SQLite) whose ready tasks are served; made with "
                                    "the run's tasks if new", shown="RUN_DIR/tasks.sqlite")
    weight_cache_mb: float = option(256.0, "MiB of generated task weights kept; others are generated when a "
                                    "batch needs them", positive_float)
    task_training_threads: int = option(1, "torch threads of the one worker that trains tasks added by "
                                        "POST /v1/tasks", positive_int)
    task_training_steps: int = option(100, "training steps of a task added by POST /v1/tasks", positive_int)
    max_tasks_training: int = option(8, "tasks added and not yet trained (the one training included) "
                                     "before 429", positive_int)
    trust_remote_code: bool = option(False, "run the code a run's hub model ships with it "
                                     "(model.trust_remote_code): only for runs you trust", shown="off")

    def batching_settings(self) -> dict:
        return {key: getattr(self, key) for key in ("batching", "max_batch_size", "max_batch_tokens",
                                                    "max_wait_ms", "max_queue", "max_client_batch",
                                                    "request_timeout_s")}
