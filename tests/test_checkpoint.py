"""fastinst.checkpoint: optimizer state of another shape is refused before anything is applied; a truncated
weights file is one line in the export tool (the other entry points: tests/test_train_net.py, test_predictor.py,
test_demo.py, tests/tools/test_convert.py)."""

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from fastinst.checkpoint import CheckpointMismatchError, guard_optimizer_state
from fastinst.export.cli import main as export_main
from fastinst.predictor import build_predictor_cfg
from tests.conftest import REPO


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


def test_export_names_a_truncated_weights_file(tmp_path, capsys):
    config = REPO / "tests" / "export" / "tiny.yaml"
    whole = tmp_path / "whole.pth"
    torch.save(
        {"model": build_model(build_predictor_cfg(config, device="cpu")).state_dict()}, whole
    )
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[:5000])
    out = tmp_path / "model.onnx"
    code = export_main(
        ["--config-file", str(config), "--output", str(out), "MODEL.WEIGHTS", str(truncated)]
    )
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(
        f"error: {truncated}: cannot be read as a PyTorch checkpoint (5000 bytes"
    )
    assert not out.exists()


def test_a_file_that_is_no_checkpoint_gets_the_unpicklers_reason(tmp_path):
    """Not torch's advice to retry with weights_only=False (wrong for a file that is not a checkpoint)."""
    from fastinst.checkpoint import CheckpointReadError, read_checkpoint

    text = tmp_path / "notes.pth"
    text.write_text("garbage\n")
    with pytest.raises(CheckpointReadError) as info:
        read_checkpoint(str(text))
    assert str(info.value) == (
        f"{text}: cannot be read as a PyTorch checkpoint (8 bytes; UnpicklingError: "
        "torch.load(weights_only=True) refused it: Unsupported operand 103). It does not start like a "
        "checkpoint (neither a zip archive nor a pickle)."
    )
