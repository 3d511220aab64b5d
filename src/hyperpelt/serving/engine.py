"""The model side of serving: requests' instances checked and encoded, and one forward per mixed batch.

An ``Engine`` owns one ``TunedModel``. ``prepare`` runs in the HTTP layer (from any number of threads at
once: each has its own tokenizer) and turns each instance into a ``Prepared`` item (its task id and token
features) or a ``RequestError``: text fields are bounded before they are tokenized, images before they are
decoded. ``run`` runs in the batcher's inference thread and answers a batch of items of any tasks in one
forward, reading the generated weights of its tasks from the model's weight cache (a task's generated on
its first batch, and again after an eviction). The served tasks are the task store's ready rows
(``served_tasks.py``), looked up per request.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..vision.images import MAX_IMAGE_PIXELS, ImageRefused, decode_image
from .served_tasks import ServedTasks

MAX_INPUT_CHARS = 20_000


class RequestError(Exception):
    """A request the server refuses: the HTTP status, a short type and which instance (or None)."""

    def __init__(self, status: int, error_type: str, message: str, instance: int | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.error_type, self.instance, self.headers = status, error_type, instance, headers

    def __reduce__(self):  # it crosses processes (Ray replicas)
        return RequestError, (self.status, self.error_type, str(self), self.instance, self.headers)


@dataclass
class Prepared:
    """One instance ready for a batch: its task's key (its row in the task store; without a store, the model's
    task id), token features and length, and its image (if any)."""

    task_id: int
    feature: dict
    length: int
    image: object = None  # a decoded PIL image, for models that read images


def shown(value: str, limit: int = 80) -> str:
    """A client's string as an error message quotes it: shortened, and escaped (a lone surrogate cannot be
    encoded as UTF-8, so an unescaped one would break the JSON answer)."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def task_description(task) -> dict:
    """What ``GET /v1/tasks`` says of a task: its fields, labels, kind and metrics."""
    return {"name": task.name, "fields": [key for _, key in task.input_fields],
            "shown_as": [shown for shown, _ in task.input_fields], "kind": task.kind,
            "labels": None if task.label_names is None else list(task.label_names),
            "metrics": [metric.__name__ for metric in task.metrics]}


class Engine:
    """One model copy answering mixed batches; ``image_dir`` is the only folder image paths may name; a text
    field holds at most ``max_input_chars`` characters, an image at most ``max_image_pixels`` pixels. It
    serves the ready tasks of ``store`` (a ``TaskStore``; None: the model's own tasks) and keeps at most
    ``weight_cache_bytes`` of generated weights (None: no bound)."""

    def __init__(self, model, num_beams: int = 1, image_dir: str | Path | None = None, *,
                 max_input_chars: int = MAX_INPUT_CHARS, max_image_pixels: int = MAX_IMAGE_PIXELS,
                 store=None, weight_cache_bytes: int | None = None):
        self.model = model.eval()
        self.served = ServedTasks(model, store)
        if store is not None or weight_cache_bytes is not None:
            model.serve_weights(weight_cache_bytes,
                                self.served.embeddings if self.served.from_embeddings else None)
        self.num_beams = num_beams
        self.image_dir = None if image_dir is None else Path(image_dir).resolve()
        self.max_input_chars, self.max_image_pixels = max_input_chars, max_image_pixels
        self.reads_images = model.reads_images
        # the run's image feature extractor, built once, on the model's device where it can move
        self.extractor = model.load_image_extractor() if self.reads_images else None
        if hasattr(self.extractor, "to"):
            self.extractor.to(model.device)
        if self.reads_images:  # Pillow's own bomb limit refuses an image rather than warning of it
            from PIL import Image

            warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        # requests are encoded on other threads than the inference thread's, each with its own tokenizer
        self._threads = threading.local()

    @property
    def request_tokenizer(self):
        """The calling thread's tokenizer (a tokenizer is not shared between threads)."""
        if not hasattr(self._threads, "tokenizer"):
            self._threads.tokenizer = self.model.new_tokenizer()
        return self._threads.tokenizer

    @property
    def tasks(self) -> list:
        """Every task served now (the run's, then the store's other ready rows)."""
        return self.served.tasks()

    @property
    def task_names(self) -> list[str]:
        return self.served.names()

    def serves(self, name) -> bool:
        """Whether a ready task is called ``name``: one lookup, not a listing of thousands of tasks."""
        return isinstance(name, str) and self.served.find(name) is not None

    def describe(self) -> dict:
        """The model and method names (for /info and answers)."""
        return self.model.describe()

    def placement(self) -> dict:
        """Where the model answers: its "device" and the "dtype" of its frozen host (for /info)."""
        return {"device": str(self.model.device), "dtype": self.model.model_config.dtype}

    @property
    def table_builds(self) -> int:
        """How often the weight cache was started on new method weights (once, when serving)."""
        return self.model.weight_table_builds

    def cache_stats(self):
        """The weight cache's ``CacheStats`` (hits, misses, evictions, generation time, size)."""
        return self.model.weight_cache_stats

    # ------------------------------------------------------------------------------------ requests

    def prepare(self, instance, index: int) -> Prepared:
        """One instance checked against its task's declaration and encoded; ``RequestError`` if not."""
        if not isinstance(instance, dict):
            raise RequestError(400, "invalid_type", "an instance must be a JSON object", index)
        name = instance.get("task")
        if not isinstance(name, str):
            raise RequestError(400, "invalid_type", 'an instance needs "task", a string', index)
        found = self.served.find(name)
        if found is None:
            raise RequestError(422, "unknown_task", f"task {shown(name)} is not served here; "
                               f"{self._listed()}", index)
        key, task = found
        row = self._fields(task, instance, index)
        image = self._image(instance, index) if self.reads_images else None
        feature = self.model.encode(task, [row], self.request_tokenizer)[0]
        length = len(feature["input_ids"]) + len(feature.get("input_ids_b", ()))
        return Prepared(key, feature, length, image)

    def _listed(self, most: int = 50) -> str:
        names = self.task_names
        if len(names) > most:
            return f"{len(names)} tasks are (GET /v1/tasks)"
        return f"the tasks are: {', '.join(names)}"

    def _fields(self, task, instance: dict, index: int) -> dict:
        keys = [key for _, key in task.input_fields]
        given = {key: instance[key] for key in keys if key in instance}
        if not given and "text" in instance:  # `predict`'s form: the fields separated by a TAB
            if not isinstance(instance["text"], str):
                raise RequestError(400, "invalid_type", '"text" must be a string', index)
            self._check_text("text", instance["text"], index)
            raw = instance["text"]
        else:
            missing = [key for key in keys if key not in instance]
            if missing:
                raise RequestError(422, "missing_field", f"task '{task.name}' needs field '{missing[0]}' "
                                   f"(its fields: {', '.join(keys)}; or \"text\" with them TAB-separated)",
                                   index)
            wrong = [key for key in keys if not isinstance(given[key], str)]
            if wrong:
                raise RequestError(400, "invalid_type", f"field '{wrong[0]}' must be a string", index)
            for key in keys:
                self._check_text(key, given[key], index)
            raw = given
        try:
            row = task.parse_input(raw, f"instance {index}")
        except UserError as err:
            raise RequestError(422, "invalid_field", str(err), index) from None
        empty = [key for key in keys if not row[key].strip()]
        if empty:
            raise RequestError(422, "empty_field", f"field '{empty[0]}' is empty", index)
        return row

    def _check_text(self, key: str, text: str, index: int) -> None:
        """A text field's length (before anything else reads it), then its characters: a lone surrogate
        (JSON's escaped ``\\ud800``) is no Unicode text, and the tokenizer cannot take it."""
        if len(text) > self.max_input_chars:
            raise RequestError(413, "field_too_long", f"field '{key}' has {len(text):,} characters; at most "
                               f"{self.max_input_chars:,} (--max-input-chars)", index)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            lone = shown(text[err.start])
            raise RequestError(400, "invalid_type", f"field '{key}' is no Unicode text: it holds a lone "
                               f"surrogate ({lone}) at character {err.start}", index) from None

    def _image(self, instance: dict, index: int):
        """The instance's image: "image" (base64 bytes) or "image_path" (a file under ``image_dir``)."""
        if isinstance(instance.get("image"), str):
            try:
                data = base64.b64decode(instance["image"], validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(400, "invalid_image", '"image" is not base64', index) from None
            return self._decode(io.BytesIO(data), '"image"', index)
        if isinstance(instance.get("image_path"), str):
            if self.image_dir is None:
                raise RequestError(422, "invalid_image", "this server takes no image paths (start it with "
                                   "--image-dir); send the image as base64 in \"image\"", index)
            name = instance["image_path"]
            return self._decode(self._image_file(name, index), f"image_path {shown(name)}", index)
        raise RequestError(422, "missing_field", 'this model reads images: give "image" (base64) or '
                           '"image_path"', index)

    def _image_file(self, name: str, index: int) -> Path:
        """The file ``name`` names under ``image_dir``, symbolic links followed; 422 for anything else (a
        folder, a path out of it, a NUL byte, a name too long for the system)."""
        refused = RequestError(422, "invalid_image", f"image_path must name a file under the server's image "
                               f"folder; {shown(name)} does not", index)
        try:
            path = (self.image_dir / name).resolve()
            if path.is_relative_to(self.image_dir) and path.is_file():
                return path
        except (OSError, ValueError):
            pass
        raise refused

    def _decode(self, source, what: str, index: int):
        try:
            return decode_image(source, self.max_image_pixels)
        except ImageRefused as err:
            raise RequestError(422, "invalid_image", f"{what}: {err}", index) from None

    # ------------------------------------------------------------------------------------ batches

    @torch.no_grad()
    def run(self, items: list[Prepared]) -> list[dict]:
        """Each item's answer, ``{"task", "label", "value"}``, from one forward over the mixed batch (with
        the features of the items' images, for a model that reads them)."""
        self.served.drop_forgotten()
        answers: list = [None] * len(items)
        task_ids, kept = [], []
        for i, item in enumerate(items):
            try:
                task_ids.append(self.served.model_task(item.task_id))  # tasks new to the model added
                kept.append(i)
            except LookupError:  # its row was deleted while it waited
                answers[i] = RequestError(422, "unknown_task", "the task was deleted")
        if not kept:
            return answers
        items = [items[i] for i in kept]
        batch = self.model.collator([item.feature for item in items], task_ids)
        if self.reads_images:  # float32, on the model's device (made there, or moved)
            batch["image_features"] = self.extractor.extract([item.image for item in items]).to(
                self.model.device)
        values = self.model.predict_batch(batch.pop("task_ids"), num_beams=self.num_beams, **batch)
        for i, task_id, value in zip(kept, task_ids, values):
            task = self.model.tasks[task_id]
            answers[i] = {"task": task.name, "label": task.answer(value), "value": value}
        return answers

    def warm_up_items(self) -> list[list[Prepared]]:
        """Batches that exercise every path before the server says ready: one per task of the run, then one
        mixed (the store's other tasks are generated on their first batch)."""
        image = {}
        if self.reads_images:
            from PIL import Image

            buffer = io.BytesIO()
            Image.new("RGB", (32, 32)).save(buffer, "PNG")
            image = {"image": base64.b64encode(buffer.getvalue()).decode()}
        tasks = [self.model.tasks[self.served.model_task(key)] for key in self.served.run_keys]
        instances = [{"task": task.name, **image, **{key: "warm up" for _, key in task.input_fields}}
                     for task in tasks]
        per_task = [[self.prepare(instance, 0)] for instance in instances]
        return [*per_task, [batch[0] for batch in per_task]]
