"""A frozen host model with a tuning method injected, conditioned per batch on task ids."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import get_backbone
from .backbones.base import is_layer_norm
from .config import ModelConfig
from .inject import ConditioningState, TaskLayerNorm, attention_implementation, use_prefix_attention
from .errors import UserError
from .methods import get_method, method_config
from .methods.base import Method


REGRESSION_SCALE = 5.0  # regression heads predict label / 5 (STS-B scores span 0–5)


@dataclass
class Encoded:
    """An encoder's output for a batch of texts: the pooled vectors, and the token states with a mask of
    the texts' own tokens (special tokens and padding left out)."""

    pooled: torch.Tensor
    tokens: torch.Tensor
    token_mask: torch.Tensor

    def rows(self, rows: torch.Tensor) -> "Encoded":
        return Encoded(self.pooled[rows], self.tokens[rows], self.token_mask[rows])


def pair_features(a: Encoded, b: Encoded) -> torch.Tensor:
    u, v = a.pooled, b.pooled
    return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


def pair_cosine(a: Encoded, b: Encoded) -> torch.Tensor:
    return F.cosine_similarity(a.pooled, b.pooled, dim=-1).unsqueeze(-1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def pair_alignment(a: Encoded, b: Encoded) -> torch.Tensor:
    """[cos(u, v), precision, recall]: the sentence cosine and BERTScore's greedy token matching (Zhang et
    al., 2020). Precision averages, over the tokens of b, the cosine to their most similar token of a;
    recall the converse. Whether a premise (a) covers its hypothesis (b) shows in precision, not in a
    symmetric sentence cosine."""
    similarity = F.normalize(b.tokens, dim=-1) @ F.normalize(a.tokens, dim=-1).transpose(1, 2)  # [B, Lb, La]
    below_any_cosine = -2.0
    best_in_a = similarity.masked_fill(~a.token_mask[:, None, :], below_any_cosine).amax(dim=2)
    best_in_b = similarity.masked_fill(~b.token_mask[:, :, None], below_any_cosine).amax(dim=1)
    precision, recall = _masked_mean(best_in_a, b.token_mask), _masked_mean(best_in_b, a.token_mask)
    return torch.cat([pair_cosine(a, b), precision[:, None], recall[:, None]], dim=-1)


PAIR_HEADS = {"features": pair_features, "cosine": pair_cosine, "alignment": pair_alignment}


class TaskHeads(nn.Module):
    """One small head per task on the mean-pooled encoder output (encoder-only backbones).

    A task whose two texts are encoded separately reads, by ``pair_head``: ``features``, [u, v, |u-v|, u*v]
    of their pooled outputs; ``cosine``, only cos(u, v), the score a sentence-embedding model was trained
    to give; ``alignment``, that cosine with the token-matching precision and recall of ``pair_alignment``.
    """

    def __init__(self, d_model: int, num_labels: list[int], separate_pairs: list[bool], pair_head: str = "features"):
        super().__init__()
        self.num_labels, self.separate_pairs, self.pair_head = num_labels, separate_pairs, pair_head
        pair_width = {"features": 4 * d_model, "cosine": 1, "alignment": 3}[pair_head]
        self.heads = nn.ModuleList(
            nn.Linear(pair_width if pair else d_model, n) for n, pair in zip(num_labels, separate_pairs)
        )
        self.class_weights: dict[int, torch.Tensor] = {}  # training only: not part of a checkpoint

    def balance_classes(self, task: int, labels: list[int]) -> None:
        """Weight the task's cross-entropy by inverse class frequency, n / (classes · n_c), as
        scikit-learn's class_weight="balanced": the weighted classes count equally in the loss."""
        counts = torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=self.num_labels[task]).float()
        self.class_weights[task] = counts.sum() / (len(counts) * counts.clamp(min=1.0))

    def start_regression_at(self, task: int, mean_label: float) -> None:
        """Start a regression head's output at the mean training label.

        From an output near 0, far below every STS-B label, the first steps fit the offset along the mean
        feature; for pairs that direction follows |u-v|, so the scores came out anti-correlated with the
        labels for many steps (seen in reports/compare_minilm.md).
        """
        with torch.no_grad():
            self.heads[task].bias.fill_(mean_label / REGRESSION_SCALE)

    def features(self, task: int, a: Encoded, b: Encoded | None) -> torch.Tensor:
        """What the task's head reads."""
        return PAIR_HEADS[self.pair_head](a, b) if self.separate_pairs[task] else a.pooled

    def forward(self, a: Encoded, b: Encoded | None, task_ids: torch.Tensor, labels):
        """Per-example loss (cross-entropy, or MSE for one-output regression heads) and predictions."""
        losses = a.pooled.new_zeros(len(task_ids))
        predictions = a.pooled.new_zeros(len(task_ids))
        for task in task_ids.unique().tolist():
            rows = (task_ids == task).nonzero(as_tuple=True)[0]
            features = self.features(task, a.rows(rows), None if b is None else b.rows(rows))
            logits = self.heads[task](features)
            if self.num_labels[task] == 1:
                scores = logits.squeeze(-1)
                predictions[rows] = scores.detach() * REGRESSION_SCALE
                if labels is not None:
                    losses[rows] = F.mse_loss(scores, labels[rows] / REGRESSION_SCALE, reduction="none")
            else:
                predictions[rows] = logits.argmax(-1).to(predictions.dtype)
                if labels is not None:
                    weight = self.class_weights.get(task)
                    weight = weight.to(logits.device) if weight is not None else None
                    losses[rows] = F.cross_entropy(logits, labels[rows].long(), weight=weight, reduction="none")
        return losses.mean(), predictions


class StaticWeights(Method):
    """One task's generated weights, computed once and held as plain tensors: no hypernetwork runs."""

    def __init__(self, method: Method, prefix, adapters: dict):
        super().__init__(method.config, method.dims, method.sites, method.num_tasks, method.block_types)
        self.name, self.prefix, self.adapters = f"{method.name} (static)", prefix, adapters

    @property
    def trains_layer_norms(self) -> bool:
        return False

    def condition(self, task_ids, state) -> None:
        state.task_ids, state.rows = task_ids, None
        state.prefix, state.adapters = self.prefix, dict(self.adapters)


class TunedModel(nn.Module):
    def __init__(self, model_config: ModelConfig, method_options: dict, tasks: list):
        super().__init__()
        self.model_config, self.tasks = model_config, list(tasks)
        self.method_options = dict(method_options)
        self.backbone = get_backbone(model_config.name)
        host, self.tokenizer = self.backbone.load(model_config)
        self.host = host
        self.backbone_params = sum(p.numel() for p in host.parameters())
        dims = self.backbone.dims(host)
        spec = get_method(self.method_options.get("name", "hyperpelt"))
        config = method_config(self.method_options)
        self.method = spec.module_cls(config, dims, self.backbone.sites(host), len(self.tasks), self.backbone.block_types)
        self.state = ConditioningState()
        self.cache_weights = True
        self._weight_cache: dict = {}
        self._cache_version: tuple = ()
        self.method.inject(host, self.backbone, self.state)
        self.host_attention = use_prefix_attention(host)
        if self.backbone.generative:
            self.heads = None
        else:
            separate = [model_config.pair_encoding == "separate" and len(t.input_fields) > 1 for t in self.tasks]
            self.heads = TaskHeads(dims.d_model, [t.num_labels for t in self.tasks], separate, model_config.pair_head)
        self._set_trainable()

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def _set_trainable(self) -> None:
        """The method's modules, the task heads, per-task layer norms, and host layer norms if the
        method trains them; the rest of the host stays frozen (unless the method is full fine-tuning)."""
        for p in self.host.parameters():
            p.requires_grad_(self.method.trains_backbone)
        per_task = [m for m in self.host.modules() if isinstance(m, TaskLayerNorm)]
        replaced = {id(m.base_layer) for m in per_task}
        if self.method.trains_layer_norms:
            for module in self.host.modules():
                if is_layer_norm(module) and id(module) not in replaced and not isinstance(module, TaskLayerNorm):
                    for p in module.parameters():
                        p.requires_grad_(True)
        for module in per_task:
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)
        for p in self.method.parameters():
            p.requires_grad_(True)

    @contextmanager
    def conditioned(self, task_ids: torch.Tensor):
        """Generate the method's weights for this batch once; every injected site reads them.

        Without gradients (inference) the generated weights are cached per set of tasks and reused until
        any method weight changes (an optimizer step or a checkpoint load bumps the tensors' versions).
        """
        if torch.is_grad_enabled() or not self.cache_weights:
            self.method.condition(task_ids, self.state)
        else:
            version = self._method_version()
            if version != self._cache_version:
                self._weight_cache, self._cache_version = {}, version
            key = tuple(task_ids.unique().tolist())
            cached = self._weight_cache.get(key)
            if cached is None:
                self.method.condition(task_ids, self.state)
                self._weight_cache[key] = (self.state.prefix, dict(self.state.adapters))
            else:
                self.method.batch_tasks(task_ids, self.state)
                self.state.prefix, self.state.adapters = cached[0], dict(cached[1])
        try:
            yield
        finally:
            self.state.clear()

    def _method_version(self) -> tuple:
        return tuple((id(p), p._version) for p in self.method.parameters())

    @contextmanager
    def regenerating_every_forward(self, task_ids: torch.Tensor):
        """The research code's behaviour, for comparison: the hypernetwork runs again at every forward of
        the host, i.e. at every decoding step of ``generate``."""
        handle = self.host.register_forward_pre_hook(lambda *_: self.method.condition(task_ids, self.state))
        try:
            with self.conditioned(task_ids):
                yield
        finally:
            handle.remove()

    @contextmanager
    def disabled(self):
        """The frozen host exactly as loaded: no prefixes, no adapters, its own attention implementation."""
        self.state.enabled = False
        try:
            with attention_implementation(self.host, self.host_attention):
                yield
        finally:
            self.state.enabled = True

    def forward(self, task_ids: torch.Tensor, labels: torch.Tensor | None = None, **inputs):
        """Loss (and per-example predictions for encoder backbones) of a batch."""
        with self.conditioned(task_ids):
            if self.backbone.generative:
                return self.host(labels=labels, **self.method.prepare_inputs(self.host, inputs, task_ids))
            a, b = self._encode_texts(inputs, task_ids)
        loss, predictions = self.heads(a, b, task_ids, labels)
        return {"loss": loss, "predictions": predictions}

    @torch.no_grad()
    def head_features(self, task_ids: torch.Tensor, **inputs) -> torch.Tensor:
        """What the head of a one-task batch reads (encoder backbones)."""
        with self.conditioned(task_ids):
            a, b = self._encode_texts(inputs, task_ids)
        return self.heads.features(int(task_ids[0]), a, b)

    def _encode_texts(self, inputs: dict, task_ids: torch.Tensor) -> tuple[Encoded, Encoded | None]:
        """The batch's first texts, and its second texts where a pair task encodes them separately."""
        second = self._encode(inputs, "_b", task_ids) if "input_ids_b" in inputs else None
        return self._encode(inputs, "", task_ids), second

    def _encode(self, inputs: dict, suffix: str, task_ids: torch.Tensor) -> Encoded:
        """Last hidden states, pooled by the mean over the attended positions (or the first token)."""
        names = ("input_ids", "attention_mask", "token_type_ids")
        sequence = self.method.prepare_inputs(self.host, {n: inputs[n + suffix] for n in names}, task_ids)
        hidden = self.host(**sequence).last_hidden_state
        if self.model_config.pooling == "first":
            pooled = hidden[:, 0]
        else:
            mask = sequence["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if self.model_config.normalize_pooled:  # unit length, scaled so that entries are of order 1
            pooled = F.normalize(pooled, dim=-1) * pooled.shape[-1] ** 0.5
        ids = inputs["input_ids" + suffix]
        special = torch.tensor(self.tokenizer.all_special_ids, device=ids.device)
        token_mask = inputs["attention_mask" + suffix].bool() & ~torch.isin(ids, special)
        token_mask = F.pad(token_mask, (hidden.shape[1] - ids.shape[1], 0), value=False)  # soft prompts lead
        return Encoded(pooled, hidden, token_mask)

    @torch.no_grad()
    def predict(self, task_ids: torch.Tensor, max_new_tokens: int = 16, num_beams: int = 1, **inputs) -> list:
        """Label values per example: parsed generations (T5) or head outputs (encoders); None if invalid."""
        inputs.pop("labels", None)
        if not self.backbone.generative:
            predictions = self.forward(task_ids, **inputs)["predictions"]
            return [p if self.tasks[t].is_regression else int(p) for p, t in zip(predictions.tolist(), task_ids.tolist())]
        with self.conditioned(task_ids):
            inputs = self.method.prepare_inputs(self.host, inputs, task_ids)
            out = self.host.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [self.tasks[t].parse_prediction(text) for text, t in zip(texts, task_ids.tolist())]

    @torch.no_grad()
    def generate(self, task_ids: torch.Tensor, **kwargs):
        """The host's ``generate`` with this batch's weights generated once, not per decoding step."""
        with self.conditioned(task_ids):
            return self.host.generate(**self.method.prepare_inputs(self.host, kwargs, task_ids))

    def export_static(self, task: str) -> "TunedModel":
        """A copy serving one task with its generated weights frozen into static tensors."""
        if type(self.method).prepare_inputs is not Method.prepare_inputs:
            raise UserError(f"method '{self.method.name}' changes the inputs; it has no generated weights to export")
        task_id = self.task_names.index(task)
        with torch.no_grad():
            self.method.condition(torch.tensor([task_id]), self.state)
        prefix, adapters = self.state.prefix, dict(self.state.adapters)
        self.state.clear()
        static = copy.deepcopy(self)
        static.method = StaticWeights(static.method, prefix, adapters)
        return static

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what trains: the method, the task heads, and the host weights the method unfreezes."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def parameter_counts(self) -> tuple[int, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, total
