"""Vision-and-language tasks in the text-to-text formats of HyperPELT's Table 4 (after Cho et al. 2021).

  coco     "caption:"                      -> the caption        (kind caption; BLEU-4, METEOR, CIDEr, SPICE)
  vqa      "vqa question: [question]"      -> the answer         (kind answer; VQA score, Karpathy split)
  gqa      "gqa question: [question]"      -> the answer         (kind answer; accuracy)
  vgqa     "vgqa question: [question]"     -> the answer         (kind answer; accuracy; no Table 4 row)
  okvqa    "okvqa question: [question]"    -> the answer         (kind answer; VQA score)
  snli_ve  "snli-ve premise: [sentence2]"  -> entailment/neutral/contradiction (Table 4's wording: the
           text shown as "premise" is SNLI-VE's sentence2, the image being the real premise)
  easy_vqa "easy_vqa question: [question]" -> one of its 13 answers (classification; accuracy)
Every example carries "image_id", the key of the image-feature cache. The readers are in `vl_readers`;
docs/vl_data.md lists the files and where to get them.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from hyperpelt.tasks import metrics as m
from hyperpelt.tasks import vl_readers  # noqa: F401  (registers the file formats)
from hyperpelt.tasks.caption_metrics import caption_metrics
from hyperpelt.tasks.registry import Task, register
from hyperpelt.tasks.sources import LocalSpec
from hyperpelt.tasks.vqa_metrics import answer_accuracy, normalize_answer, vqa_score

QUESTION = (("question", "question"),)
ROLES = ("train", "dev", "test")
SNLI_VE_LABELS = ("entailment", "neutral", "contradiction")
# easy_vqa.get_answers(), in the order of the package's answers.txt
EASY_VQA_ANSWERS = ("circle", "green", "red", "gray", "yes", "teal", "black", "rectangle", "yellow",
                    "triangle", "brown", "blue", "no")


def _easy_vqa_files(role: str) -> tuple[str, ...]:
    """The installed package's own file first (an absolute path), then a copy under the data folder."""
    spec = importlib.util.find_spec("easy_vqa")
    copy = f"easy_vqa/{role}/questions.json"
    if spec is None or spec.origin is None:
        return (copy,)
    return (str(Path(spec.origin).parent / "data" / role / "questions.json"), copy)


def answer_vocabulary(examples: Iterable[dict], min_count: int = 1) -> tuple[str, ...]:
    """The classifier's answers for an encoder backbone: the normalised target answers of the (training)
    examples seen at least ``min_count`` times, most frequent first, ties alphabetical. (VL-T5 and LXMERT
    keep answers seen at least 9 times in VQA's train+val, 3,129 answers.)"""
    counts = Counter(normalize_answer(ex["label"]) for ex in examples)
    kept = [(-n, answer) for answer, n in counts.items() if n >= min_count and answer]
    return tuple(answer for _, answer in sorted(kept))


def answer_index(vocabulary: tuple[str, ...], answer: str) -> int:
    """Class index of an answer in the vocabulary; -1 when it is not there (no target for a classifier)."""
    normalized = normalize_answer(answer)
    return vocabulary.index(normalized) if normalized in vocabulary else -1


_TASKS = [
    Task("coco", (), None, (caption_metrics,), prefix="caption:", split_rule="given", kind="caption",
         reference_key="references",
         local=LocalSpec("coco_karpathy", tuple((r, ("coco/dataset_coco.json",)) for r in ROLES))),
    Task("vqa", QUESTION, None, (vqa_score,), split_rule="given", kind="answer", reference_key="answers",
         local=LocalSpec("vqa_karpathy", (("train", ("vqa/karpathy_train.json",)),
                                          ("dev", ("vqa/karpathy_val.json",)),
                                          ("test", ("vqa/karpathy_test.json",))))),
    Task("gqa", QUESTION, None, (answer_accuracy,), split_rule="given", kind="answer",
         local=LocalSpec("gqa", (("train", ("gqa/train.json",)), ("dev", ("gqa/valid.json",)),
                                 ("test", ("gqa/testdev.json",))))),
    Task("vgqa", QUESTION, None, (answer_accuracy,), split_rule="given", kind="answer",
         local=LocalSpec("vgqa", tuple((r, ("vg/question_answers.json",)) for r in ROLES))),
    Task("okvqa", QUESTION, None, (vqa_score,), split_rule="halve_dev", kind="answer",
         reference_key="answers",
         local=LocalSpec("okvqa", (("train", ("okvqa/OpenEnded_mscoco_train2014_questions.json",)),
                                   ("dev", ("okvqa/OpenEnded_mscoco_val2014_questions.json",))))),
    Task("snli_ve", (("premise", "hypothesis"),), SNLI_VE_LABELS, (m.accuracy,), prefix="snli-ve",
         split_rule="given",
         local=LocalSpec("jsonl", (("train", ("snli_ve/snli_ve_train.jsonl",)),
                                   ("dev", ("snli_ve/snli_ve_dev.jsonl",)),
                                   ("test", ("snli_ve/snli_ve_test.jsonl",))),
                         fields=(("hypothesis", "sentence2"), ("image_id", "Flickr30K_ID")),
                         label="gold_label",
                         label_values=tuple((name, i) for i, name in enumerate(SNLI_VE_LABELS)))),
    Task("easy_vqa", QUESTION, EASY_VQA_ANSWERS, (m.accuracy,), split_rule="halve_test",
         local=LocalSpec("easy_vqa", (("train", _easy_vqa_files("train")), ("test", _easy_vqa_files("test"))),
                         label_values=tuple((name, i) for i, name in enumerate(EASY_VQA_ANSWERS)))),
]

for _task in _TASKS:
    register(_task)
