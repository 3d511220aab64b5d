"""One training step and generation measured on a T5-sized model with random weights, on a device and in
a dtype: the measuring shared by bench/train_step.py (CPU, in float32 and bf16) and bench/gpu_check.py.

``args`` carries the shapes: ``model`` (a built-in T5 size), ``batch``, ``input_len``, ``target_len`` and
``steps`` (timed steps after one warm-up). ``dtype`` is the frozen backbone's (model.dtype); a dtype other
than float32 also trains under Accelerate's mixed precision of that dtype (train.precision), as the trainer
does. Float32 runs exactly as it always did: no Accelerator, no autocast.
"""

from __future__ import annotations

import resource
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

GRID, FEATURE_DIM = 49, 2048  # image features of the vl-hyperpelt step
GLUE = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")
PRECISION = {"bfloat16": "bf16"}  # model.dtype -> train.precision (Accelerate's mixed_precision)
DTYPES = ("float32", *PRECISION)


def parse_dtypes(text: str, allowed: tuple[str, ...] = DTYPES) -> list[str]:
    """A comma list of dtypes, float32 first (always measured: the rows the others are compared with)."""
    asked = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in asked if d not in allowed]
    if unknown:
        raise ValueError(f"unknown dtype {', '.join(unknown)}: choose from {', '.join(allowed)}")
    return ["float32", *dict.fromkeys(d for d in asked if d != "float32")]


def peak_memory_gb(device) -> float:
    """The peak since the last ``reset_peak_memory`` (or the process's start): memory allocated on a CUDA
    device, else the resident set's high-water mark (GiB)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    status = Path("/proc/self/status")
    if status.is_file():  # Linux: VmHWM, which clear_refs resets (ru_maxrss keeps the process's peak)
        line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024**2  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def reset_peak_memory(device) -> None:
    """Start the peak of ``peak_memory_gb`` afresh from what the process holds now (where the platform
    can: CUDA, and Linux's resident set; elsewhere the process's peak stays)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif Path("/proc/self/clear_refs").is_file():
        Path("/proc/self/clear_refs").write_text("5")


def make_batch(args, torch, task_ids, images: bool = False, device=None):
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 32000, (args.batch, args.input_len), generator=gen)
    labels = torch.randint(5, 32000, (args.batch, args.target_len), generator=gen)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    if images:  # the same tokens as the text-only batch, and an image of its own for every example
        batch["image_features"] = torch.rand(args.batch, GRID, FEATURE_DIM, generator=gen)
    batch = batch if task_ids is None else {"task_ids": torch.tensor(task_ids), **batch}
    return batch if device is None else {k: v.to(device) for k, v in batch.items()}


def tuned_model(model_name: str, method: str, dtype: str = "float32", **model_options):
    """``method`` on a random T5 of ``model_name``'s size for the 8 GLUE tasks; ``model_options``: more of
    ModelConfig's fields."""
    from hyperpelt.config import ModelConfig
    from hyperpelt.model import TunedModel
    from hyperpelt.tasks import get_task

    half = {} if dtype == "float32" else {"dtype": dtype}
    config = ModelConfig(name=model_name, pretrained=False, **half, **model_options)
    return TunedModel(config, {"name": method}, [get_task(t) for t in GLUE])


def peft_model(model_name: str, method: str, dtype: str = "float32"):
    """peft's LoRA (r 8 on q and v) or prefix tuning on a random T5; its frozen host in ``dtype`` (peft keeps
    its adapters float32)."""
    import torch
    from peft import LoraConfig, PrefixTuningConfig, TaskType, get_peft_model

    from hyperpelt.backbones.t5 import random_t5

    host = random_t5(model_name)
    if dtype != "float32":
        host = host.to(getattr(torch, dtype))
    if method == "peft-lora":
        config = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=8, lora_alpha=16, target_modules=["q", "v"])
    else:
        config = PrefixTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=49)
    return get_peft_model(host, config)


def synchronizer(device):
    """What waits for the device's queued work before a clock is read (nothing on the CPU)."""
    import torch

    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def timed_steps(step, steps: int, sync=lambda: None) -> list[float]:
    step()  # warm-up
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def training_step(model, optimizer, batch, dtype: str, device):
    """One optimizer step as a function: plain in float32; in another dtype through an Accelerator of that
    mixed precision (its autocast, and its gradient scaler where fp16 has one), as the trainer runs it."""
    if dtype == "float32":
        backward = None
    else:
        from accelerate import Accelerator

        accelerator = Accelerator(mixed_precision=PRECISION[dtype], cpu=device.type == "cpu",
                                  device_placement=False)
        model, optimizer = accelerator.prepare(model, optimizer)
        backward = accelerator.backward

    def step():
        loss = model(**batch).loss
        loss.backward() if backward is None else backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_train(args, method: str, mixed: bool = False, device: str = "cpu",
                  dtype: str = "float32") -> dict:
    """Median step time, the process's peak memory and the trained share of the backbone of ``method``."""
    import torch

    import hyperpelt.model  # noqa: F401  (transformers with it: the libraries' share, before any model)

    if method.startswith("peft-"):
        import peft  # noqa: F401
    if dtype != "float32":
        import accelerate  # noqa: F401
    device = torch.device(device)
    start_gb = peak_memory_gb(device)
    if method.startswith("peft-"):
        model = peft_model(args.model, method, dtype)
        backbone = sum(p.numel() for n, p in model.named_parameters()
                       if "lora_" not in n and "prompt_encoder" not in n)
        batch = make_batch(args, torch, None, device=device)
    else:
        model = tuned_model(args.model, method, dtype)
        backbone = model.backbone_params
        task_ids = list(range(args.batch)) if mixed else [0] * args.batch
        batch = make_batch(args, torch, [t % len(GLUE) for t in task_ids], images=model.method.reads_images,
                           device=device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    # The steps' peak, with the model as it stands: a random host in half precision is drawn in float32
    # and cast, a transient that loading pretrained weights in that dtype never holds.
    reset_peak_memory(device)
    times = timed_steps(training_step(model, optimizer, batch, dtype, device), args.steps,
                        synchronizer(device))
    trainable = sum(p.numel() for p in params)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"step_s": statistics.median(times), "peak_mem_gb": peak_memory_gb(device),
            "trainable_pct": 100 * trainable / backbone, "start_gb": start_gb,
            "weights_gb": weights / 1024**3}


def measure_generate(args, device: str = "cpu", dtype: str = "float32") -> dict:
    """HyperPELT's generation (median seconds): with its weight table ("cached_s"), regenerating at every
    decoding step ("uncached_s", the research code's way), exported into static tensors ("static_s"), and
    the frozen backbone alone ("frozen_s"); interleaved."""
    import torch

    from bench.research_code import regenerating_every_forward

    device = torch.device(device)
    model = tuned_model(args.model, "hyperpelt", dtype).eval().to(device)
    batch = make_batch(args, torch, None, device=device)
    task_ids = torch.zeros(args.batch, dtype=torch.long, device=device)
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
                  max_new_tokens=args.target_len, min_new_tokens=args.target_len)
    static = model.export_static(GLUE[0])

    def cached():
        model.generate(task_ids, **kwargs)

    def uncached():
        with regenerating_every_forward(model, task_ids):
            model.host.generate(**kwargs)

    def exported():
        static.generate(task_ids, **kwargs)

    def frozen():
        with model.disabled():
            model.host.generate(**kwargs)

    # Interleaved (cached, uncached, static, frozen, cached, ...): cached and static run the same kernels, so
    # only interleaving keeps the machine's drift out of their ratio.
    variants = {"cached_s": cached, "uncached_s": uncached, "static_s": exported, "frozen_s": frozen}
    times = {name: [] for name in variants}
    sync = synchronizer(device)
    # the host's own generate (regenerating, frozen) meets float32 trained weights: autocast, as TunedModel's
    autocast = nullcontext() if dtype == "float32" else torch.autocast(device.type, getattr(torch, dtype))
    with torch.no_grad(), autocast:
        for fn in variants.values():
            fn()  # warm-up
        sync()
        for _ in range(args.steps):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
