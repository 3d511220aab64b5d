"""Readers of the V&L tasks' files in their official layouts (docs/vl_data.md says where to get them).

Each reader returns a tuple of example dicts with the text fields, "image_id" (a string, the key of the
image-feature cache), "label" (the target: answer text, caption, or class index) and "idx"; VQA-style
readers add "answers" (the human answers the VQA score compares against) and "question_id"; caption
readers add "references" (every reference caption of the image). A malformed record is a UserError naming
the file and the record's index (JSON lists) or line (jsonl), and the missing or bad field.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from functools import cache
from pathlib import Path

from hyperpelt.errors import UserError
from hyperpelt.tasks.sources import LocalSpec, register_reader
from hyperpelt.textfiles import read_text

# VG-QA has no official split: images go to dev / test / train by a hash of their id (disjoint images).
VGQA_BUCKETS = {"dev": range(0, 2), "test": range(2, 4), "train": range(4, 100)}
# Karpathy's COCO file: which of its "split" values make each role (VL-T5 trains on train + restval).
COCO_SPLITS = {"train": ("train", "restval"), "dev": ("val",), "test": ("test",)}


def _load(path: str):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except (ValueError, RecursionError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def _records(data, path: str, key: str | None = None) -> list:
    """The list of records, at the top level or under ``key``."""
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise UserError(f"{path}: expected a JSON object with a '{key}' list")
        data = data[key]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records" + (f" under '{key}'" if key else ""))
    return data


def _get(record, key: str, path: str, where: str, kind: type | tuple = object):
    if not isinstance(record, dict):
        raise UserError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise UserError(f"{path}: {where}: missing field '{key}'")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise UserError(f"{path}: {where}: field '{key}' must be {names}, got {type(value).__name__}")
    return value


def top_answer(scores: dict, answers: list[str]) -> str:
    """The highest-scored answer (first among ties); without scores the most common human answer."""
    if scores:
        best = max(scores.values())
        return next(a for a, s in scores.items() if s == best)
    return Counter(answers).most_common(1)[0][0] if answers else ""


def _human_answers(raw: list, path: str, where: str) -> list[str]:
    """Human answers given as strings or as {"answer": ...} records (the official annotation layout)."""
    out = []
    for j, answer in enumerate(raw):
        if isinstance(answer, dict):
            answer = _get(answer, "answer", path, f"{where}, answer {j}", str)
        elif not isinstance(answer, str):
            raise UserError(f"{path}: {where}: answer {j} must be a string or an object with 'answer'")
        out.append(answer)
    return out


def _scored_question(record, i: int, path: str, with_answers: bool) -> dict:
    """A VL-T5 question record: img_id, sent, question_id, label {answer: score}[, answers]."""
    where = f"record {i}"
    scores = _get(record, "label", path, where, dict)
    example = {"question": _get(record, "sent", path, where, str),
               "image_id": str(_get(record, "img_id", path, where, (str, int))),
               "question_id": str(_get(record, "question_id", path, where, (str, int)))}
    answers = _human_answers(_get(record, "answers", path, where, list), path, where) if with_answers else []
    example["label"] = top_answer(scores, answers)
    example["answers"] = answers if with_answers else [example["label"]]
    example["answer_scores"] = {str(a): float(s) for a, s in scores.items()}
    return example


@cache
def read_vqa_karpathy(path: str, spec: LocalSpec, role: str) -> tuple[dict, ...]:
    """VL-T5's vqa/karpathy_{train,val,test}.json: a list of {img_id, sent, question_id, label, answers}."""
    records = _records(_load(path), path)
    return tuple({**_scored_question(r, i, path, True), "idx": i} for i, r in enumerate(records))


@cache
def read_gqa(path: str, spec: LocalSpec, role: str) -> tuple[dict, ...]:
    """VL-T5's gqa/{train,valid,testdev}.json: a list of {img_id, sent, question_id, label}."""
    records = _records(_load(path), path)
    return tuple({**_scored_question(r, i, path, False), "idx": i} for i, r in enumerate(records))


@cache
def read_coco_karpathy(path: str, spec: LocalSpec, role: str) -> tuple[dict, ...]:
    """Karpathy's dataset_coco.json ({"images": [{filename, split, sentences: [{raw}], cocoid}]}): the
    role's images; for training one example per reference caption, else one per image (label: its first
    caption)."""
    examples = []
    for i, image in enumerate(_records(_load(path), path, "images")):
        where = f"image {i}"
        if _get(image, "split", path, where, str) not in COCO_SPLITS[role]:
            continue
        filename = _get(image, "filename", path, where, str)
        raws = [_get(s, "raw", path, f"{where}, sentence {j}", str).strip()
                for j, s in enumerate(_get(image, "sentences", path, where, list))]
        if not raws:
            raise UserError(f"{path}: {where}: field 'sentences' is empty")
        cocoid = str(_get(image, "cocoid", path, where, (str, int)))
        base = {"image_id": Path(filename).stem, "cocoid": cocoid, "references": raws}
        for caption in raws if role == "train" else raws[:1]:
            examples.append({**base, "label": caption, "idx": len(examples)})
    return tuple(examples)


def vgqa_role(image_id: str) -> str:
    """The split role of a Visual Genome image: dev, test or train, by CRC-32 of its id mod 100."""
    bucket = zlib.crc32(str(image_id).encode()) % 100
    return next(role for role, buckets in VGQA_BUCKETS.items() if bucket in buckets)


@cache
def read_vgqa(path: str, spec: LocalSpec, role: str) -> tuple[dict, ...]:
    """Visual Genome's question_answers.json: a list of {id, qas: [{question, answer, qa_id, image_id}]},
    the role's images only (see `vgqa_role`)."""
    examples = []
    for i, image in enumerate(_records(_load(path), path)):
        image_id = str(_get(image, "id", path, f"record {i}", (str, int)))
        if vgqa_role(image_id) != role:
            continue
        for j, qa in enumerate(_get(image, "qas", path, f"record {i}", list)):
            where = f"record {i}, qa {j}"
            answer = _get(qa, "answer", path, where, str).strip()
            examples.append({"question": _get(qa, "question", path, where, str), "image_id": image_id,
                             "question_id": str(_get(qa, "qa_id", path, where, (str, int))),
                             "label": answer, "answers": [answer], "idx": len(examples)})
    return tuple(examples)


def okvqa_annotations_path(questions: str) -> Path:
    """OpenEnded_mscoco_train2014_questions.json -> mscoco_train2014_annotations.json, same folder."""
    name = Path(questions).name
    match = re.fullmatch(r"OpenEnded_mscoco_(\w+?)_questions\.json", name)
    if match is None:
        raise UserError(f"{questions}: expected a file named OpenEnded_mscoco_<subtype>_questions.json")
    return Path(questions).with_name(f"mscoco_{match.group(1)}_annotations.json")


@cache
def read_okvqa(path: str, spec: LocalSpec, role: str) -> tuple[dict, ...]:
    """OK-VQA's OpenEnded_mscoco_<subtype>_questions.json ({"questions": [{image_id, question,
    question_id}]}) with mscoco_<subtype>_annotations.json beside it ({"annotations": [{question_id,
    answers: [{answer, ...}] x 10}]}); image ids become COCO_<subtype>_<12 digits>."""
    annotations_path = okvqa_annotations_path(path)
    if not annotations_path.is_file():
        raise UserError(f"{annotations_path}: file not found; OK-VQA needs it beside {Path(path).name}")
    subtype = annotations_path.name[len("mscoco_"):-len("_annotations.json")]
    ann_file = str(annotations_path)
    answers_of = {}
    for i, ann in enumerate(_records(_load(ann_file), ann_file, "annotations")):
        qid = _get(ann, "question_id", ann_file, f"annotation {i}", (str, int))
        answers_of[str(qid)] = _human_answers(_get(ann, "answers", ann_file, f"annotation {i}", list),
                                              ann_file, f"annotation {i}")
    examples = []
    for i, question in enumerate(_records(_load(path), path, "questions")):
        where = f"question {i}"
        qid = str(_get(question, "question_id", path, where, (str, int)))
        if qid not in answers_of:
            raise UserError(f"{path}: {where}: question_id {qid} has no annotation in {ann_file}")
        image = _get(question, "image_id", path, where, int)
        answers = answers_of[qid]
        examples.append({"question": _get(question, "question", path, where, str),
                         "image_id": f"COCO_{subtype}_{image:012d}", "question_id": qid,
                         "label": top_answer({}, answers), "answers": answers, "idx": i})
    return tuple(examples)


@cache
def read_easy_vqa(path: str, spec: LocalSpec, role: str) -> tuple[dict, ...]:
    """easy-vqa's data/{train,test}/questions.json (what easy_vqa.get_train_questions() reads): a list of
    [question, answer, image_id] triples; image ids become "<train|test>/<id>" (ids restart per split;
    the image is easy_vqa.get_<split>_image_paths()[id])."""
    labels = dict((name, index) for name, index in (spec.label_values or ()))
    split = Path(path).parent.name
    examples = []
    for i, triple in enumerate(_records(_load(path), path)):
        if not (isinstance(triple, list) and len(triple) == 3 and isinstance(triple[2], int)):
            raise UserError(f"{path}: record {i}: expected [question, answer, image_id]")
        question, answer, image = triple
        if answer not in labels:
            raise UserError(f"{path}: record {i}: answer {answer!r} is not one of the {len(labels)} answers")
        examples.append({"question": str(question), "image_id": f"{split}/{image}", "label": labels[answer],
                         "answers": [answer], "idx": i})
    return tuple(examples)


for _format, _reader in (("vqa_karpathy", read_vqa_karpathy), ("gqa", read_gqa),
                         ("coco_karpathy", read_coco_karpathy), ("vgqa", read_vgqa),
                         ("okvqa", read_okvqa), ("easy_vqa", read_easy_vqa)):
    register_reader(_format, _reader)
