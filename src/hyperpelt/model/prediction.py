"""What a ``TunedModel`` answers: label values of collated batches, of a task's features, of raw inputs."""

from __future__ import annotations

import torch

from ..vision.inputs import input_images


class Predicting:
    """``TunedModel``'s prediction methods (it inherits them): batches are collated by ``self.collator``,
    so they are on the model's device; ``forward`` and ``generate`` do the rest."""

    @torch.no_grad()
    def predict_batch(self, task_ids: torch.Tensor, num_beams: int = 1, max_new_tokens: int | None = None,
                      **inputs) -> list:
        """Label values of a collated batch: class indices or scores, None where a generation is no label,
        answer texts for open-answer tasks. Generation stops after ``max_new_tokens`` (default:
        model.max_target_length)."""
        inputs.pop("labels", None)
        if not self.backbone.generative:
            predictions = self.forward(task_ids, **inputs).predictions
            tasks = [self.tasks[t] for t in task_ids.tolist()]
            return [self._label_value(p, task) for p, task in zip(predictions.tolist(), tasks)]
        out = self.generate(task_ids, max_new_tokens=max_new_tokens or self.model_config.max_target_length,
                            num_beams=num_beams, do_sample=False, **inputs)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [self.tasks[t].parse_prediction(text) for text, t in zip(texts, task_ids.tolist())]

    def _label_value(self, prediction: float, task):
        if task.is_regression:
            return prediction
        vocabulary = self.answer_vocabularies.get(task.name)
        return int(prediction) if vocabulary is None else vocabulary[int(prediction)]

    def predict_features(self, task_id: int, features: list[dict], batch_size: int = 32,
                         num_beams: int = 1, image_lookup=None) -> list:
        """Label values (see ``predict_batch``) of one task's features, in order; their images' features
        from ``image_lookup`` (a mapping image id -> [grid, dim]) if given, else from the feature cache."""
        collate = self.collator if image_lookup is None else self.collator.with_images(image_lookup)
        was_training = self.training
        self.eval()
        predictions = []
        for batch in collate.batches(task_id, features, batch_size):
            predictions += self.predict_batch(batch.pop("task_ids"), num_beams=num_beams, **batch)
        self.train(was_training)
        return predictions

    def predict(self, task: str, inputs: list, batch_size: int = 32, num_beams: int = 1) -> list:
        """Answers to raw inputs of one task: label names, scores for regression, None where a generation
        is not a valid label. An input is a dict of the task's fields or a string (the text of a one-field
        task; for pair tasks the fields separated by a TAB, or a JSON object), with an "image" (a file) or
        an "image_id" (in the feature cache) for a model that reads images."""
        task_id = self.task_id(task)
        spec = self.tasks[task_id]
        rows = [spec.parse_input(row, f"input {i + 1}") for i, row in enumerate(inputs)]
        images = input_images(rows, self.feature_cache, self.image_extractor, self.reads_images)
        predictions = self.predict_features(task_id, self.encode(spec, rows), batch_size, num_beams, images)
        return [spec.answer(p) for p in predictions]
