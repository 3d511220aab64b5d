"""GLUE tasks (HyperPELT Table 4 formats), with local GLUE tsv files and the hub's "glue" dataset."""

from hyperpelt.tasks import metrics as m
from hyperpelt.tasks.registry import Task, register
from hyperpelt.tasks.sources import HubSpec, LocalSpec

NLI2 = ("entailment", "not_entailment")


def _tsv(folder, fields, label, values, header=True, columns=None, dev="dev.tsv"):
    files = (("train", (f"glue/{folder}/train.tsv",)), ("dev", (f"glue/{folder}/{dev}",)))
    raw = None if values is None else tuple((str(v), i) for i, v in enumerate(values))
    return LocalSpec("tsv", files, fields, label, raw, header, columns)


def _hub(config, fields, dev="validation"):
    return HubSpec(("nyu-mll/glue", config), (("train", "train"), ("dev", dev)),
                   tuple((f, f) for f in fields))


# name, (shown, key) fields, label names, metrics, local spec, hub config, split rule
_TABLE = [
    ("cola", (("sentence", "sentence"),), ("unacceptable", "acceptable"), (m.matthews_corrcoef,),
     _tsv("CoLA", (("sentence", 3),), 1, (0, 1), header=False, columns=4),
     _hub("cola", ("sentence",)), "halve_dev"),
    ("sst2", (("sentence", "sentence"),), ("negative", "positive"), (m.accuracy,),
     _tsv("SST-2", (("sentence", 0),), 1, (0, 1)), _hub("sst2", ("sentence",)), "carve_train"),
    ("mrpc", (("sentence1", "sentence1"), ("sentence2", "sentence2")), ("not_equivalent", "equivalent"),
     (m.accuracy, m.f1), _tsv("MRPC", (("sentence1", 3), ("sentence2", 4)), 0, (0, 1)),
     _hub("mrpc", ("sentence1", "sentence2")), "halve_dev"),
    ("qqp", (("question1", "question1"), ("question2", "question2")), ("not_duplicate", "duplicate"),
     (m.accuracy, m.f1), _tsv("QQP", (("question1", 3), ("question2", 4)), 5, (0, 1)),
     _hub("qqp", ("question1", "question2")), "carve_train"),
    ("stsb", (("sentence1", "sentence1"), ("sentence2", "sentence2")), None, (m.pearson, m.spearman),
     _tsv("STS-B", (("sentence1", 7), ("sentence2", 8)), 9, None),
     _hub("stsb", ("sentence1", "sentence2")), "halve_dev"),
    ("mnli", (("hypothesis", "hypothesis"), ("premise", "premise")),
     ("entailment", "neutral", "contradiction"), (m.accuracy,),
     _tsv("MNLI", (("premise", 8), ("hypothesis", 9)), -1, ("entailment", "neutral", "contradiction"),
          dev="dev_matched.tsv"),
     _hub("mnli", ("premise", "hypothesis"), dev="validation_matched"), "carve_train"),
    ("qnli", (("question", "question"), ("sentence", "sentence")), NLI2, (m.accuracy,),
     _tsv("QNLI", (("question", 1), ("sentence", 2)), 3, NLI2),
     _hub("qnli", ("question", "sentence")), "carve_train"),
    ("rte", (("sentence1", "sentence1"), ("sentence2", "sentence2")), NLI2, (m.accuracy,),
     _tsv("RTE", (("sentence1", 1), ("sentence2", 2)), 3, NLI2),
     _hub("rte", ("sentence1", "sentence2")), "halve_dev"),
]

for _name, _fields, _labels, _metrics, _local, _hubspec, _rule in _TABLE:
    register(Task(_name, _fields, _labels, _metrics, _local, _hubspec, split_rule=_rule,
                  round_scores=_name == "stsb"))
