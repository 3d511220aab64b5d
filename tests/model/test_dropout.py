"""model.dropout sets every dropout of the frozen host (attention's included); null keeps the model's own."""

import dataclasses

import pytest
import torch

from conftest import build_model, minilm_config, t5_config, task_batch
from hyperpelt.config import ModelConfig
from hyperpelt.errors import UserError
from hyperpelt.model import TunedModel
from hyperpelt.tasks import get_task
from hyperpelt.transfer import SharedHosts


def dropout_rates(host) -> set[float]:
    rates = {m.p for m in host.modules() if isinstance(m, torch.nn.Dropout)}
    return rates | {m.dropout for m in host.modules() if isinstance(getattr(m, "dropout", None), float)}


def training_loss(model, batch) -> torch.Tensor:
    model.train()
    task_ids = torch.zeros(len(batch["labels"]), dtype=torch.long)
    with torch.no_grad():
        return model(task_ids, **batch).loss


def test_minilm_dropout_zero_makes_a_training_forward_repeatable_and_null_keeps_the_hosts_own():
    own = build_model(minilm_config(), tasks=("sst2",))
    assert dropout_rates(own.host) == {0.1}
    batch = task_batch(own, "sst2", 4)
    assert not torch.equal(training_loss(own, batch), training_loss(own, batch))  # it drops

    none = build_model(dataclasses.replace(minilm_config(), dropout=0.0), tasks=("sst2",))
    assert dropout_rates(none.host) == {0.0}
    first = training_loss(none, batch)
    assert torch.equal(first, training_loss(none, batch))
    with torch.no_grad():
        assert torch.equal(first, own.eval()(torch.zeros(4, dtype=torch.long), **batch).loss)  # as at eval


def test_t5_attention_reads_its_own_dropout_float_and_it_is_set_too():
    model = build_model(dataclasses.replace(t5_config(), dropout=0.25))
    assert dropout_rates(model.host) == {0.25}
    assert dropout_rates(build_model(t5_config()).host) == {0.0}  # random built-in T5: none


def test_a_cell_on_a_lent_host_does_not_change_the_shared_host():
    hosts = SharedHosts()
    config = dataclasses.replace(minilm_config(), dropout=0.0)
    lent = hosts.host(config)
    TunedModel(config, {"name": "hyperpelt"}, [get_task("sst2")], host=lent)
    assert dropout_rates(lent) == {0.0}
    assert dropout_rates(hosts.host(minilm_config())) == {0.1}  # another config: its own host, untouched


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_a_dropout_outside_zero_to_one_is_refused(p):
    with pytest.raises(UserError, match="model.dropout"):
        ModelConfig(dropout=p)
