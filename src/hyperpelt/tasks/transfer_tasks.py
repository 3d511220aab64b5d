"""Transfer tasks: IMDB, TREC (coarse), PAWS, SciTail, Yelp polarity.

TREC label names are lowercase words for the six coarse classes in the hub's order
(ABBR, ENTY, DESC, HUM, LOC, NUM).
"""

from hyperpelt.tasks import metrics as m
from hyperpelt.tasks.registry import Task, register
from hyperpelt.tasks.sources import HubSpec, LocalSpec

SENTIMENT = ("negative", "positive")
TREC_LABELS = ("abbreviation", "entity", "description", "human", "location", "numeric")


def _files(folder, **names):
    return tuple((role, tuple(f"transfer/{folder}/{n}" for n in paths)) for role, paths in names.items())


def _hub(path, splits, fields, label="label", values=None):
    return HubSpec(path, tuple(splits.items()), fields, label, values)


# name, (shown, key) fields, label names, local spec, hub spec, split rule (all scored by accuracy)
_TABLE = [
    ("imdb", (("sentence", "text"),), SENTIMENT,
     LocalSpec("jsonl", _files("imdb", train=("train.sample10k.jsonl", "train.jsonl"), test=("test.jsonl",)),
               (("text", "text"),), "label", ((0, 0), (1, 1))),
     _hub(("stanfordnlp/imdb",), {"train": "train", "test": "test"}, (("text", "text"),)), "halve_test"),
    ("trec", (("question", "text"),), TREC_LABELS,
     LocalSpec("trec", _files("trec", train=("train_5500.label",), test=("TREC_10.label",))),
     _hub(("CogComp/trec",), {"train": "train", "test": "test"}, (("text", "text"),), "coarse_label"),
     "halve_test"),
    ("paws", (("sentence1", "sentence1"), ("sentence2", "sentence2")), ("not_equivalent", "equivalent"),
     LocalSpec("tsv", _files("paws", train=("train.tsv",), dev=("dev.tsv",), test=("test.tsv",)),
               (("sentence1", 1), ("sentence2", 2)), 3, (("0", 0), ("1", 1))),
     _hub(("google-research-datasets/paws", "labeled_final"),
          {"train": "train", "dev": "validation", "test": "test"},
          (("sentence1", "sentence1"), ("sentence2", "sentence2"))), "given"),
    ("scitail", (("premise", "premise"), ("hypothesis", "hypothesis")), ("entailment", "neutral"),
     LocalSpec("tsv", _files("scitail", train=("train.tsv",), dev=("dev.tsv",), test=("test.tsv",)),
               (("premise", 0), ("hypothesis", 1)), 2, (("entails", 0), ("neutral", 1)),
               header=False, num_columns=3),
     _hub(("allenai/scitail", "tsv_format"), {"train": "train", "dev": "validation", "test": "test"},
          (("premise", "premise"), ("hypothesis", "hypothesis")), "label", (("entails", 0), ("neutral", 1))),
     "given"),
    ("yelp_polarity", (("sentence", "text"),), SENTIMENT,
     LocalSpec("csv", _files("yelp_polarity", train=("train.csv",), test=("test.csv",)),
               (("text", 1),), 0, (("1", 0), ("2", 1)), header=False, num_columns=2),
     _hub(("fancyzhx/yelp_polarity",), {"train": "train", "test": "test"}, (("text", "text"),)),
     "halve_test"),
]

for _name, _fields, _labels, _local, _hubspec, _rule in _TABLE:
    register(Task(_name, _fields, _labels, (m.accuracy,), _local, _hubspec, split_rule=_rule))
