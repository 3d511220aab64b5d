"""Head kinds: the one-hidden-layer classification head reads what a linear head cannot."""

import torch

from hyperpelt.heads.task_heads import ClassificationHead, MLPClassificationHead, head_kinds
from hyperpelt.tasks import get_task

COLOURS = 6


def equality_data(n: int, generator: torch.Generator):
    """Two one-hot colours side by side (the question's, the image's); the label: are they the same?"""
    a = torch.randint(COLOURS, (n,), generator=generator)
    same = torch.rand(n, generator=generator) < 0.5
    b = torch.where(same, a, (a + torch.randint(1, COLOURS, (n,), generator=generator)) % COLOURS)
    x = torch.cat([torch.nn.functional.one_hot(a, COLOURS), torch.nn.functional.one_hot(b, COLOURS)], 1)
    return x.float(), (a == b).long()


def trained_accuracy(head_class) -> float:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    head = head_class(2 * COLOURS, get_task("rte"))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        x, y = equality_data(128, generator)
        losses, _ = head(x, y)
        optimizer.zero_grad()
        losses.mean().backward()
        optimizer.step()
    x, y = equality_data(2000, generator)
    with torch.no_grad():
        _, predictions = head(x)
    return (predictions == y).float().mean().item()


def test_the_hidden_layer_head_learns_whether_two_features_are_equal_where_a_linear_head_cannot():
    assert "classification-mlp" in head_kinds()
    assert trained_accuracy(MLPClassificationHead) > 0.97
    # the best linear rule on one-hot pairs is far from it: "different" (5/6 of pairs would be, half here)
    assert trained_accuracy(ClassificationHead) < 0.75


def test_the_hidden_layer_head_has_no_linear_probe_start():
    head = MLPClassificationHead(8, get_task("rte"))
    before = {k: v.clone() for k, v in head.state_dict().items()}
    assert head.fit_probe(torch.randn(20, 8).numpy(), torch.randint(2, (20,)).numpy(), False, 0) is None
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())
