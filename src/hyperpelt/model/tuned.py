"""``TunedModel``: a frozen host model with a tuning method injected, conditioned per batch on task ids."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..backbones import get_backbone
from ..config import ModelConfig
from ..data.batches import Collator
from ..errors import UserError
from ..heads import Encoded, HeadsConfig, TaskHeads
from ..inject import ConditioningState, attention_implementation, use_prefix_attention
from ..inject.reference import reference_path, reference_path_on
from ..methods import WeightTable, get_method, method_config, method_name, method_options
from ..tasks.vl import answer_index
from ..vision.inputs import check_feature_cache
from .encoding import TextReader, can_pack, packed_generation_inputs
from .output import TunedOutput
from .precision import Precision, float_features, train_in_float32
from .prediction import Predicting
from .serving import Serving
from .static import export_static


class TunedModel(Predicting, Serving, Precision, nn.Module):
    """A frozen host model (a backbone) with a tuning method injected into it, serving a list of tasks.

    The method's modules (``method``), task heads on encoder backbones (``heads``) and whatever host
    weights the method unfreezes train; the rest of ``host`` is frozen. Each batch carries ``task_ids``:
    the method generates its weights for those tasks once per forward, and every injected site reads them
    from one ``ConditioningState``. At inference each task's weights are generated once, on first use, into
    a cache indexed by task id (emptied when a method weight changes; bounded by ``serve_weights``).

    ``predict(task, inputs)`` answers raw inputs of one task (see ``Predicting``); ``forward`` takes
    collated batches.

    Open-answer tasks on encoders classify over ``answer_vocabularies`` ({task: answers}, built from the
    training split). ``use_feature_cache(cache)`` gives batches the features of their examples' images
    (``image_features`` [B, grid, dim]), which reach the method as ``state.image_features`` during a forward.
    """

    def __init__(self, model_config: ModelConfig, method, tasks: list, heads: HeadsConfig | None = None,
                 task_prefix: bool = True, answer_vocabularies: dict | None = None,
                 host: nn.Module | None = None, tokenizer=None):
        super().__init__()
        self.model_config, self.tasks, self.task_prefix = model_config, list(tasks), task_prefix
        self.method_config = method_config(method)
        self.heads_config = heads or HeadsConfig()
        self.backbone = get_backbone(model_config.name, model_config.trust_remote_code)
        self.heads_config.check_applies(self.backbone.generative, model_config.name)
        # a host and tokenizer of model_config already loaded (few-shot cells share one: transfer.SharedHosts)
        self.host = self.backbone.load_host(model_config) if host is None else host
        if model_config.dropout is not None:
            self.backbone.set_dropout(self.host, model_config.dropout)
        self._tokenizer = tokenizer
        self.backbone_params = sum(p.numel() for p in self.host.parameters())
        dims, spec = self.backbone.dims(self.host), get_method(method_name(self.method_config))
        self.method = spec.module_cls(self.method_config, dims, self.backbone.sites(self.host),
                                      len(self.tasks), self.backbone.block_types)
        self.state = ConditioningState()
        self.weight_table = WeightTable(self.method)
        self.method.inject(self.host, self.backbone, self.state)
        self.method.init_from_host(self.host)
        self.host_attention = use_prefix_attention(self.host, self.backbone)
        self.heads, self.answer_vocabularies = None, {}
        self.pack_inference = True  # encoders read a batch packed at inference (see encoding.py)
        self.feature_cache, self.image_extractor = None, None  # see use_feature_cache
        if not self.backbone.generative:
            self.answer_vocabularies = {t.name: list(answer_vocabularies[t.name]) for t in self.tasks
                                        if t.kind == "answer" and t.name in (answer_vocabularies or {})}
            options = self.heads_config
            separate = [options.pair_encoding == "separate" and len(t.input_fields) > 1 for t in self.tasks]
            self.heads = TaskHeads(dims.d_model, self.tasks, separate, options.pair_head, options.kinds,
                                   self.answer_vocabularies)
        self.method.set_trainable(self.host, self.backbone)
        train_in_float32(self)  # master weights, over a host in model.dtype (see precision.py)

    @property
    def tokenizer(self):
        """The host's tokenizer, loaded on first use (counting parameters needs none)."""
        if self._tokenizer is None:
            self._tokenizer = self.backbone.load_tokenizer(self.model_config)
        return self._tokenizer

    def use_feature_cache(self, cache) -> None:
        """Read examples' image features from ``cache`` (a ``vision.FeatureCache``, or None), checked against
        the method; its extractor is kept (and saved) to read image files given at prediction time."""
        check_feature_cache(self.method, cache)
        self.feature_cache = cache
        if cache is not None:
            self.image_extractor = cache.extractor

    @property
    def collator(self) -> Collator:
        """What batches this model's features: its backbone and tokenizer, images from its feature cache."""
        return Collator(self.backbone, self.tokenizer, self.feature_cache, self.device)

    def _apply(self, fn, recurse=True):
        """``to``, ``cuda``, ``half`` and the like: the weight cache of generated weights, made on the old
        device, is emptied and filled again as tasks are used."""
        out = super()._apply(fn, recurse)
        self.method.weights_changed()
        return out

    def text_reader(self) -> TextReader:
        """How the host, with the method's injections, reads a batch's texts (encoder backbones)."""
        return TextReader(self.host, self.backbone, self.method, self.state, self.heads_config,
                          self.tokenizer.all_special_ids, self.pack_inference)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def method_options(self) -> dict:
        return method_options(self.method_config)

    def task_id(self, task: str) -> int:
        if task not in self.task_names:
            raise UserError(f"task '{task}' is not one of this model's tasks: {', '.join(self.task_names)}")
        return self.task_names.index(task)

    # ------------------------------------------------------------------------------------ serving

    def describe(self) -> dict[str, str]:
        """The names of the host model and of the method."""
        return {"model": self.model_config.name, "method": self.method.name}

    @property
    def reads_images(self) -> bool:
        """Whether the method reads each example's image features (``image_features`` of a batch)."""
        return bool(self.method.reads_images)

    def load_image_extractor(self):
        """The extractor that made the image features this model was trained on (a
        ``vision.FeatureExtractor``), loaded now, to read new image files."""
        from ..vision.extractors import get_extractor

        if self.image_extractor is None:
            raise UserError("this model was trained without image features; it reads no image files")
        return get_extractor(self.image_extractor)

    def new_tokenizer(self):
        """A tokenizer of its own for another thread than the one running the model (see ``encode``)."""
        return self.backbone.load_tokenizer(self.model_config)

    @property
    def weight_table_builds(self) -> int:
        """How often the inference weight cache was started on new method weights."""
        return self.weight_table.builds

    # ------------------------------------------------------------------------------------ conditioning

    @contextmanager
    def conditioned(self, task_ids: torch.Tensor, image_features: torch.Tensor | None = None):
        """Generate the method's weights for this batch once; every injected site reads them.

        Without gradients (inference) they come from the weight cache (generated on a miss). The batch's
        image features (or None) are on ``state.image_features`` meanwhile, for methods that read them.
        On the reference path (``reference``) no table is read and every site has them generated anew.
        """
        self.state.image_features = image_features
        if torch.is_grad_enabled() or not self.method.generates_weights or reference_path():
            self.method.condition(task_ids, self.state)
        else:
            self.weight_table.condition(task_ids, self.state, self.compute_dtype)
        try:
            self.method.condition_examples(self.state)  # per-example weights (from images), beside the tasks'
            self.cast_generated()
            if reference_path():
                self.state.regenerate = lambda: (self.method.condition(task_ids, self.state),
                                                 self.method.condition_examples(self.state),
                                                 self.cast_generated())
            yield
        finally:
            self.state.clear()

    @contextmanager
    def reference(self):
        """The slow reference path while this lasts, in this thread (``inject/reference.py``): no weight
        table, nothing packed, weights regenerated at each layer call, no rows or joins kept for the batch."""
        with reference_path_on():
            yield

    @contextmanager
    def disabled(self):
        """The frozen host exactly as loaded: no prefixes, no adapters, its own attention implementation."""
        self.state.enabled = False
        try:
            with attention_implementation(self.host, self.host_attention):
                yield
        finally:
            self.state.enabled = True

    # ------------------------------------------------------------------------------------ batches

    def forward(self, task_ids: torch.Tensor, labels: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None, **inputs) -> TunedOutput:
        """Loss (with labels), and the host's logits (text to text) or predictions (encoders) of a batch;
        ``image_features`` [B, grid, dim] go to the method (``state.image_features``), never to the host."""
        with self.computing(), self.conditioned(task_ids, image_features):
            if self.backbone.generative:
                out = self.host(labels=labels, **self.method.prepare_inputs(self.host, inputs, self.state))
                return TunedOutput(loss=out.loss, logits=out.logits)
            a, b = float_features(*self.text_reader()(inputs, task_ids))
        loss, predictions = self.heads(a, b, task_ids, labels)
        return TunedOutput(loss=loss, predictions=predictions)

    @torch.no_grad()
    def generate(self, task_ids: torch.Tensor, image_features: torch.Tensor | None = None, **kwargs):
        """The host's ``generate`` with this batch's weights generated once, not per decoding step."""
        with self.computing(), self.conditioned(task_ids, image_features):
            inputs = self.method.prepare_inputs(self.host, kwargs, self.state)
            if can_pack(inputs, self.method, self.state, self.pack_inference):  # the encoder reads it packed
                inputs = packed_generation_inputs(self.host, self.backbone, self.state, inputs)
            return self.host.generate(**inputs)

    # ------------------------------------------------------------------------------------ examples

    def encode(self, task, rows: list[dict], tokenizer=None) -> list[dict]:
        """Features (token ids, targets, labels) of a task's examples, as this model reads them, with their
        "image_id"; an encoder's open answers become indices into the task's answer vocabulary. Another
        thread than the one running the model passes its own ``tokenizer`` (a tokenizer is not shared)."""
        features = self.backbone.encode(
            tokenizer or self.tokenizer, task, rows, task_prefix=self.task_prefix,
            max_input_length=self.model_config.max_input_length,
            max_target_length=self.model_config.max_target_length,
            separate_pairs=self.heads_config.pair_encoding == "separate",
        )
        vocabulary = self.answer_vocabularies.get(task.name)
        for feature, row in zip(features, rows):
            if vocabulary is not None:
                feature["label"] = answer_index(vocabulary, str(feature["label"]))
            if "image_id" in row:
                feature["image_id"] = row["image_id"]
        return features

    @torch.no_grad()
    def encode_batch(self, batch: dict) -> tuple[Encoded, Encoded | None]:
        """The encoder step: what an encoder backbone's task heads read of a collated ``batch`` (its texts,
        read under its tasks' weights and its images), at inference: in eval mode, without gradients."""
        inputs = dict(batch)
        task_ids = inputs.pop("task_ids")
        inputs.pop("labels", None)
        was_training = self.training
        self.eval()
        try:
            with self.computing(), self.conditioned(task_ids, inputs.pop("image_features", None)):
                return float_features(*self.text_reader()(inputs, task_ids))
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------------------------ weights

    def export_static(self, task: str) -> TunedModel:
        """A copy serving one task with its generated weights frozen into static tensors."""
        return export_static(self, task)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what trains: the method, the task heads, and the host weights the method unfreezes."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def parameter_counts(self) -> tuple[int, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, total
