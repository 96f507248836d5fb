"""fastinst.checkpoint: optimizer state of another shape is refused before anything is applied."""

import pytest
import torch
from torch import nn

from fastinst.checkpoint import CheckpointMismatchError, guard_optimizer_state


def trained_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    return optimizer


def test_optimizer_state_of_another_shape_is_refused():
    seven = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 7))  # e.g. a 6-class head (+ no-object)
    saved = trained_optimizer(seven).state_dict()
    four = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4))
    optimizer = torch.optim.AdamW(four.parameters(), lr=0.1)
    guard_optimizer_state(optimizer, four)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"'exp_avg' of 1\.weight has shape \(7, 4\), the parameter has \(4, 4\)",
    ):
        optimizer.load_state_dict(saved)
    assert len(optimizer.state) == 0  # nothing applied

    same = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 7))
    optimizer = torch.optim.AdamW(same.parameters(), lr=0.1)
    guard_optimizer_state(optimizer, same)
    optimizer.load_state_dict(saved)  # the same shapes load as before
    assert torch.equal(optimizer.state[same[1].weight]["exp_avg"], saved["state"][2]["exp_avg"])
