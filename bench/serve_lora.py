"""A peft-LoRA server behind hyperpelt's batcher: the baseline of the serving benchmark (bench/serve.py).

    python -m bench.serve_lora RUN_DIR [--port 8000] [--batching mixed] [--max-batch-size 16]
                               [--max-wait-ms 5] [--rank 8] [--adapters N]

The frozen backbone of a HyperPELT run (built as the run builds it: the same model config, and for a
randomly initialised T5 the same seed) with one peft LoRA adapter per task of the run, each named after
its task (r = ``--rank``, alpha 2r, on the attention's query and value projections). A mixed batch runs in
one forward with peft's ``adapter_names`` (one adapter name per row). The adapters start random (peft's
``init_lora_weights=False``) so that they differ: speed does not depend on their values. ``--adapters N``
serves N tasks: the run's, then copies of them named "SOURCE-i" (bench/many_tasks.py asks for them), each
with an adapter of its own and its source's head.

MiniLM (an encoder) answers through the run's own task heads (their trained weights read from its
checkpoint) on the LoRA-adapted encoder's output, pooled as the run pools it; T5 generates the answer
text, as HyperPELT's T5 runs do. Requests are checked and tokenized by hyperpelt's ``Engine.prepare``
unchanged, and the HTTP layer, queue and batcher are hyperpelt's own (``server.serve`` with this engine
factory): only the model differs from ``hyperpelt serve``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from bench.serving.workload import derived_tasks
from hyperpelt.serving.engine import Engine, Prepared

# the attention's query and value projections, the usual LoRA targets (as bench/train_step.py's peft-lora)
LORA_TARGETS = {True: ["q", "v"], False: ["query", "value"]}


class LoraModel(nn.Module):
    """A frozen backbone with one LoRA adapter per task, and (encoders) one head per task; answers mixed
    batches with peft's per-row ``adapter_names``. Offers what ``Engine`` reads of a ``TunedModel``."""

    def __init__(self, model_config, tasks: list, heads_config=None, rank: int = 8, seed: int | None = None,
                 head_weights: dict | None = None, task_prefix: bool = True):
        from peft import LoraConfig, TaskType, get_peft_model

        from hyperpelt.backbones import get_backbone
        from hyperpelt.heads import HeadsConfig, TaskHeads

        super().__init__()
        self.model_config, self.tasks, self.task_prefix = model_config, list(tasks), task_prefix
        self.heads_config = heads_config or HeadsConfig()
        self.backbone = get_backbone(model_config.name, model_config.trust_remote_code)
        if seed is not None:  # a randomly initialised T5 comes out as the run's (see checkpoint.build_model)
            torch.manual_seed(seed)
        host = self.backbone.load_host(model_config)
        self.generative = bool(self.backbone.generative)
        self.method = SimpleNamespace(name=f"peft-lora-r{rank}", reads_images=False)
        self._tokenizer = None
        config = dict(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, init_lora_weights=False,
                      target_modules=LORA_TARGETS[self.generative])
        if self.generative:
            config["task_type"] = TaskType.SEQ_2_SEQ_LM
        names = self.task_names
        self.peft = get_peft_model(host, LoraConfig(**config), adapter_name=names[0])
        for name in names[1:]:
            self.peft.add_adapter(name, LoraConfig(**config))
        self.heads = None
        if not self.generative:
            options = self.heads_config
            separate = [options.pair_encoding == "separate" and len(t.input_fields) > 1 for t in self.tasks]
            dims = self.backbone.dims(host)
            self.heads = TaskHeads(dims.d_model, self.tasks, separate, options.pair_head, options.kinds)
            if head_weights:
                self.heads.load_state_dict({k.removeprefix("heads."): v for k, v in head_weights.items()
                                            if k.startswith("heads.")})
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_run(cls, run_dir: str | Path, rank: int = 8, adapters: int | None = None) -> LoraModel:
        """The backbone, tasks, heads and (encoders) trained head weights of a finished HyperPELT run; with
        ``adapters`` more than its tasks, copies of its tasks to that count (``derived_tasks``), each
        with its source's head weights and an adapter of its own."""
        from hyperpelt.checkpoint import WEIGHTS, read_checkpoint_config, read_weights
        from hyperpelt.config import ModelConfig, from_dict
        from hyperpelt.heads import HeadsConfig
        from hyperpelt.run_folders import finished_run
        from hyperpelt.tasks import get_task

        best = finished_run(run_dir) / "best"
        meta = read_checkpoint_config(best)
        heads = from_dict(HeadsConfig, meta["heads"], "heads")
        tasks = [get_task(t) for t in meta["tasks"]]
        weights = read_weights(best / WEIGHTS)
        served = derived_tasks(tasks, max(adapters or 0, len(tasks)))
        for i, (_, source) in enumerate(served[len(tasks):], len(tasks)):
            mark = f"heads.heads.{source}."
            weights.update({f"heads.heads.{i}." + k.removeprefix(mark): v for k, v in list(weights.items())
                            if k.startswith(mark)})
        return cls(from_dict(ModelConfig, meta["model"], "model"), [t for t, _ in served], heads, rank,
                   meta.get("seed"), weights, meta.get("task_prefix", True))

    def adapter_bytes(self) -> int:
        """What one task's LoRA weights take (its A and B matrices in every adapted projection)."""
        name = f".{self.task_names[0]}."
        return sum(p.numel() * p.element_size() for key, p in self.peft.named_parameters()
                   if "lora_" in key and key.endswith(name + "weight"))

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    reads_images = False

    def describe(self) -> dict[str, str]:
        return {"model": self.model_config.name, "method": self.method.name}

    def new_tokenizer(self):
        return self.backbone.load_tokenizer(self.model_config)

    @property
    def collator(self):
        from hyperpelt.data.batches import Collator

        return Collator(self.backbone, self.tokenizer)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.backbone.load_tokenizer(self.model_config)
        return self._tokenizer

    def encode(self, task, rows: list[dict], tokenizer=None) -> list[dict]:
        """Features of a task's rows, exactly as the HyperPELT run tokenizes them."""
        return self.backbone.encode(
            tokenizer or self.tokenizer, task, rows, task_prefix=self.task_prefix,
            max_input_length=self.model_config.max_input_length,
            max_target_length=self.model_config.max_target_length,
            separate_pairs=self.heads_config.pair_encoding == "separate",
        )

    @torch.no_grad()
    def predict_batch(self, task_ids: torch.Tensor, num_beams: int = 1, **inputs) -> list:
        """Label values of a collated mixed batch: each row through its own task's adapter."""
        from hyperpelt.heads import Encoded, pool

        inputs.pop("labels", None)
        names = [self.task_names[t] for t in task_ids.tolist()]
        if self.generative:
            out = self.peft.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                     adapter_names=names, max_new_tokens=self.model_config.max_target_length,
                                     num_beams=num_beams, do_sample=False)
            texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
            return [self.tasks[t].parse_prediction(text) for text, t in zip(texts, task_ids.tolist())]

        def encoded(suffix: str) -> Encoded:  # as TunedModel._encode, without a method
            ids, mask = inputs["input_ids" + suffix], inputs["attention_mask" + suffix]
            types = inputs["token_type_ids" + suffix]
            hidden = self.peft(input_ids=ids, attention_mask=mask, token_type_ids=types,
                               adapter_names=names).last_hidden_state
            options = self.heads_config
            pooled = pool(hidden, mask, options.pooling, options.normalize_pooled)
            special = torch.tensor(self.tokenizer.all_special_ids, device=ids.device)
            return Encoded(pooled, hidden, mask.bool() & ~torch.isin(ids, special))

        second = encoded("_b") if "input_ids_b" in inputs else None
        _, predictions = self.heads(encoded(""), second, task_ids, None)
        out = []
        for value, t in zip(predictions.tolist(), task_ids.tolist()):
            out.append(value if self.tasks[t].is_regression else int(value))
        return out


class LoraEngine(Engine):
    """hyperpelt's ``Engine`` (request checks, tokenization, warm-up batches) over a ``LoraModel``."""

    def __init__(self, model: LoraModel, num_beams: int = 1, warm_tasks: int | None = None):
        super().__init__(model, num_beams)
        # warm up as hyperpelt serve does: on the run's own tasks, not on every copy (--adapters)
        self.served.run_keys = self.served.run_keys[:warm_tasks]

    @property
    def table_builds(self) -> int:
        return 0  # no hypernetwork

    def cache_stats(self):
        from hyperpelt.methods import CacheStats

        return CacheStats()  # nothing generated, nothing cached

    @torch.no_grad()
    def run(self, items: list[Prepared]) -> list[dict]:
        batch = self.model.collator([item.feature for item in items], [item.task_id for item in items])
        values = self.model.predict_batch(batch.pop("task_ids"), num_beams=self.num_beams, **batch)
        tasks = [self.model.tasks[item.task_id] for item in items]
        return [{"task": task.name, "label": task.answer(v), "value": v} for task, v in zip(tasks, values)]


def lora_engine_factory(rank: int, adapters: int | None = None):
    def make_engine(run_dir, options) -> LoraEngine:
        from hyperpelt.inference import run_config
        from hyperpelt.quiet import quiet_libraries

        quiet_libraries()
        config = run_config(run_dir)
        return LoraEngine(LoraModel.from_run(run_dir, rank, adapters), config.train.num_beams,
                          len(config.data.tasks))

    return make_engine


def main(argv=None) -> int:
    from hyperpelt.serving.server import serve
    from hyperpelt.serving.settings import ServeOptions

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--batching", choices=("mixed", "by-task", "off"), default="mixed")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank r (default 8)")
    parser.add_argument("--adapters", type=int, default=None,
                        help="adapters (tasks): the run's tasks, then copies of them (default: its tasks)")
    args = parser.parse_args(argv)
    options = ServeOptions(host=args.host, port=args.port, batching=args.batching,
                           max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms)
    return serve(args.run_dir, options, make_engine=lora_engine_factory(args.rank, args.adapters))


if __name__ == "__main__":
    raise SystemExit(main())
