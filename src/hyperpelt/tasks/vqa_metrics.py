"""Answer metrics of the V&L tasks: the VQA score (Antol et al. 2015; Goyal et al. 2017), GQA accuracy.

Pure functions f(targets, predictions) -> {name: value in percent}, as in `hyperpelt.tasks.metrics`.
Answers are compared after the normalisation of the official VQA evaluation, written here from its
description: whitespace collapsed; punctuation removed (or made a space when it separates words, and
commas between digits kept out); periods removed unless part of a number; lower case; number words
zero..ten as digits; the articles a, an, the dropped; common contractions given their apostrophe
("dont" -> "don't").

One deliberate difference from the official script: it normalises a prediction only when the ten human
answers are not all the same; here both sides are always normalised (as VL-T5's evaluator does), so
"Two" matches "2" whatever the other answers are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PUNCTUATION = ";/[]\"{}()=+\\_->< @`,?!".replace(" ", "")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_IN_NUMBER = re.compile(r"(?<!\d)\.|\.(?!\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Contractions written without their apostrophe(s), as annotators often typed them.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldntve": "couldn't've", "couldnt've": "couldn't've", "couldn'tve": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hadntve": "hadn't've",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hedve": "he'd've", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've",
    "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itdve": "it'd've", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightntve": "mightn't've", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't",
    "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldntve": "shouldn't've", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebodyd": "somebody'd", "somebodydve": "somebody'd've", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someonedve": "someone'd've", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingdve": "something'd've", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "theredve": "there'd've", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theydve": "they'd've",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whodve": "who'd've", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldntve": "wouldn't've", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youdve": "you'd've", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}


def _punctuation(text: str) -> str:
    separated = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in _PUNCTUATION:
        # a mark beside a space (or any mark, once a comma sits between digits) goes; one inside a word
        # ("black/white") becomes a space
        if f"{mark} " in text or f" {mark}" in text or separated:
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    return _PERIOD_NOT_IN_NUMBER.sub("", text)


def normalize_answer(answer: str) -> str:
    """An answer as the VQA evaluation compares it: "Two dogs." -> "2 dogs", "a dog" -> "dog"."""
    text = " ".join(str(answer).replace("\n", " ").replace("\t", " ").split())
    words = []
    for word in _punctuation(text).lower().split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def _references(target) -> list[str]:
    if isinstance(target, str):
        return [target]
    return [a["answer"] if isinstance(a, dict) else str(a) for a in target]


def vqa_accuracy(answers: Sequence, prediction: str | None) -> float:
    """One question's VQA accuracy in 0..1: min(1, humans who gave the prediction / 3), averaged over
    the leave-one-out subsets of the human answers (the 10 choose 9 subsets of the usual 10). With m of
    10 humans matching: 0 -> 0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1. A single reference answer
    counts by exact match."""
    references = [normalize_answer(a) for a in _references(answers)]
    if prediction is None or not references:
        return 0.0
    guess = normalize_answer(prediction)
    matches = sum(ref == guess for ref in references)
    if len(references) == 1:
        return float(matches)
    # leaving out a matching answer leaves m - 1 matches; leaving out another one leaves m
    total = matches * min(1.0, (matches - 1) / 3) + (len(references) - matches) * min(1.0, matches / 3)
    return total / len(references)


def _check(targets: Sequence, predictions: Sequence) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    if not len(targets):
        raise ValueError("no examples to score")


def vqa_score(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """Mean VQA accuracy; each target is the list of human answers (strings or {"answer": ...} dicts),
    or one answer string."""
    _check(targets, predictions)
    return {"vqa_score": 100.0 * sum(map(vqa_accuracy, targets, predictions)) / len(targets)}


def answer_accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """Exact match after `normalize_answer` (GQA's accuracy; VG-QA's); a target may be one answer or a
    list whose first entry is the answer."""
    _check(targets, predictions)
    hits = [p is not None and normalize_answer(p) == normalize_answer(_references(t)[0])
            for t, p in zip(targets, predictions)]
    return {"accuracy": 100.0 * sum(hits) / len(hits)}
