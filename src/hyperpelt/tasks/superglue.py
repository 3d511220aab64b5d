"""SuperGLUE tasks used for transfer (CB, BoolQ), with local SuperGLUE jsonl and the hub's "super_glue"."""

from hyperpelt.tasks import metrics as m
from hyperpelt.tasks.registry import Task, register
from hyperpelt.tasks.sources import HubSpec, LocalSpec

CB_LABELS = ("entailment", "contradiction", "neutral")


def _jsonl(folder, fields, values):
    files = (("train", (f"superglue/{folder}/train.jsonl",)), ("dev", (f"superglue/{folder}/val.jsonl",)))
    return LocalSpec("jsonl", files, tuple((k, k) for k in fields), "label",
                     tuple((v, i) for i, v in enumerate(values)))


def _hub(config, fields):
    return HubSpec(("aps/super_glue", config), (("train", "train"), ("dev", "validation")),
                   tuple((k, k) for k in fields))


# name, (shown, key) fields, label names, metrics, local spec, hub spec, split rule
_TABLE = [
    ("cb", (("hypothesis", "hypothesis"), ("premise", "premise")), CB_LABELS, (m.accuracy,),
     _jsonl("cb", ("premise", "hypothesis"), CB_LABELS), _hub("cb", ("premise", "hypothesis")), "halve_dev"),
    ("boolq", (("question", "question"), ("context", "passage")), ("False", "True"), (m.accuracy,),
     _jsonl("boolq", ("question", "passage"), (False, True)),
     _hub("boolq", ("question", "passage")), "halve_dev"),
]

for _name, _fields, _labels, _metrics, _local, _hubspec, _rule in _TABLE:
    register(Task(_name, _fields, _labels, _metrics, _local, _hubspec, split_rule=_rule))
