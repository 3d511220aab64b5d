"""A method and a head defined here, through the public registration alone, train, save and reload
(the worked examples of docs/extending.md)."""

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from hyperpelt import load_config, load_run, train
from hyperpelt.heads import TaskHead, register_head
from hyperpelt.inject import AdapterWeights, wrap_parallel_adapters
from hyperpelt.methods import Method, register_method
from hyperpelt.run_folders import new_run_dir


@dataclass
class TaskAdapterConfig:
    width: int = 2
    """Bottleneck of each task's adapter beside every feed-forward block."""


class TaskAdapter(Method):
    """A plain parallel adapter per task and feed-forward block (no hypernetwork)."""

    def __init__(self, config, dims, sites, num_tasks, block_types):
        super().__init__(config, dims, sites, num_tasks, block_types)
        self.ffn_sites = self.sites_of("ffn")
        shape = (num_tasks, len(self.ffn_sites), config.width, dims.d_model)
        self.down = nn.Parameter(torch.randn(shape) * 0.02)
        self.up = nn.Parameter(torch.zeros(shape).transpose(2, 3).contiguous())

    def inject(self, host, backbone, state):
        wrap_parallel_adapters(self.ffn_sites, host, backbone, state)

    def condition(self, task_ids, state):
        tasks = self.batch_tasks(task_ids, state)
        state.adapters["ffn"] = AdapterWeights(self.down[tasks], self.up[tasks])


class HingeHead(nn.Linear, TaskHead):
    """Classification by a multi-class hinge loss."""

    def __init__(self, in_features, task):
        nn.Linear.__init__(self, in_features, task.num_labels)

    def forward(self, features, labels=None):
        scores = nn.Linear.forward(self, features)
        if labels is None:
            return None, scores.argmax(-1)
        return F.multi_margin_loss(scores, labels.long(), reduction="none"), scores.argmax(-1)


register_method("toy-task-adapter", TaskAdapterConfig, TaskAdapter)
register_head("toy-hinge", HingeHead)


def test_a_toy_method_and_head_train_one_step_save_and_reload(tmp_path):
    config = load_config(None, [
        "model.name=minilm-l6", "model.max_input_length=32", "method.name=toy-task-adapter", "method.width=3",
        "heads.kinds={sst2: toy-hinge}", "data.tasks=[sst2, stsb]", "data.max_eval_examples=8",
        "train.steps=1", "train.eval_every=1", "train.batch_size=4", "train.learning_rate=0.01",
        f"train.output_dir={tmp_path}", "train.run_name=toy",
    ])
    run_dir = new_run_dir(config, "toy")
    train(config, run_dir, quiet=True)

    saved = load_file(run_dir / "best" / "method.safetensors")
    assert saved["method.down"].shape == (2, 6, 3, 384) and saved["method.up"].shape == (2, 6, 384, 3)
    assert saved["method.up"].abs().sum() > 0  # the zero-started up weights moved in the one step
    checkpoint = json.loads((run_dir / "best" / "checkpoint.json").read_text())
    assert checkpoint["method"]["name"] == "toy-task-adapter"

    model = load_run(run_dir)
    assert type(model.method) is TaskAdapter and type(model.heads.heads[0]) is HingeHead
    assert all(torch.equal(model.trainable_state_dict()[name], value) for name, value in saved.items())
    answers = model.predict("sst2", ["a fine film", "a dull film"])
    assert all(answer in ("negative", "positive") for answer in answers)
