"""Parameter groups, optimizer choice and gradient clipping of the trainer (SPEC §7.4)."""

from __future__ import annotations

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from fastinst import add_fastinst_config
from fastinst.engine.optimizer import build_optimizer, build_param_groups

BASE_LR, WD = 1e-4, 0.05


class ToyFastInst(nn.Module):
    """The parameter owners that matter for the groups, named like the real model."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), FrozenBatchNorm2d(8)
        )
        self.sem_seg_head = nn.Module()
        self.sem_seg_head.conv = nn.Conv2d(8, 8, 1)
        self.sem_seg_head.gn = nn.GroupNorm(2, 8)
        self.sem_seg_head.ln = nn.LayerNorm(8)
        self.sem_seg_head.empty_query_feat = nn.Embedding(4, 8)
        self.sem_seg_head.meta_pos_embed = nn.Parameter(torch.zeros(8, 16))
        self.sem_seg_head.frozen = nn.Linear(8, 8)
        self.sem_seg_head.frozen.requires_grad_(False)
        self.sem_seg_head.tied = nn.Linear(8, 8)
        self.sem_seg_head.tied_again = (
            self.sem_seg_head.tied
        )  # a shared module: its params count once


def _groups(model: nn.Module, multiplier: float = 0.1) -> dict[str, dict]:
    groups = build_param_groups(
        model,
        base_lr=BASE_LR,
        weight_decay=WD,
        weight_decay_norm=0.0,
        weight_decay_embed=0.0,
        backbone_multiplier=multiplier,
    )
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in groups:
        assert len(g["params"]) == 1
        out[names[id(g["params"][0])]] = g
    assert len(out) == len(groups), "a parameter appears in two groups"
    return out


def test_groups_lr_and_weight_decay() -> None:
    model = ToyFastInst()
    groups = _groups(model)
    expected = {
        "backbone.0.weight": (BASE_LR * 0.1, WD),
        "backbone.1.weight": (BASE_LR * 0.1, 0.0),
        "backbone.1.bias": (BASE_LR * 0.1, 0.0),
        "sem_seg_head.conv.weight": (BASE_LR, WD),
        "sem_seg_head.conv.bias": (BASE_LR, WD),
        "sem_seg_head.gn.weight": (BASE_LR, 0.0),
        "sem_seg_head.gn.bias": (BASE_LR, 0.0),
        "sem_seg_head.ln.weight": (BASE_LR, 0.0),
        "sem_seg_head.ln.bias": (BASE_LR, 0.0),
        "sem_seg_head.empty_query_feat.weight": (BASE_LR, 0.0),
        "sem_seg_head.meta_pos_embed": (BASE_LR, WD),
        "sem_seg_head.tied.weight": (BASE_LR, WD),
        "sem_seg_head.tied.bias": (BASE_LR, WD),
    }
    assert set(groups) == set(expected)
    for name, (lr, wd) in expected.items():
        assert groups[name]["lr"] == pytest.approx(lr), name
        assert groups[name]["weight_decay"] == wd, name


def test_every_trainable_param_exactly_once() -> None:
    model = ToyFastInst()
    groups = build_param_groups(
        model,
        base_lr=BASE_LR,
        weight_decay=WD,
        weight_decay_norm=0.0,
        weight_decay_embed=0.0,
        backbone_multiplier=0.1,
    )
    ids = [id(g["params"][0]) for g in groups]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) == len(trainable)
    assert set(ids) == trainable


def _cfg(**solver):
    cfg = get_cfg()
    add_fastinst_config(cfg)
    cfg.SOLVER.BASE_LR = BASE_LR
    cfg.SOLVER.WEIGHT_DECAY = WD
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    for key, value in solver.items():
        node = cfg.SOLVER
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return cfg


def test_adamw_defaults() -> None:
    opt = build_optimizer(_cfg(), ToyFastInst())
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([BASE_LR * 0.1, BASE_LR])


def test_adamw_on_cpu_is_fused_and_updates_like_the_plain_loop() -> None:
    torch.manual_seed(0)
    fused_model, plain_model = ToyFastInst(), ToyFastInst()
    plain_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer(_cfg(), fused_model)
    assert fused.defaults["fused"] is True
    plain_params = dict(plain_model.named_parameters())
    plain = torch.optim.AdamW(
        [
            {"params": [plain_params[name]], "lr": g["lr"], "weight_decay": g["weight_decay"]}
            for g, name in zip(fused.param_groups, _owner_names(fused, fused_model))
        ],
        BASE_LR,
        fused=False,
    )
    for _ in range(3):
        for model in (fused_model, plain_model):
            for i, p in enumerate(p for p in model.parameters() if p.requires_grad):
                p.grad = torch.linspace(-1.0, 2.0, p.numel()).reshape(p.shape) * (i + 1)
        fused.step()
        plain.step()
    for (name, a), b in zip(fused_model.named_parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def _owner_names(opt: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(g["params"][0])] for g in opt.param_groups]


def test_sgd_momentum() -> None:
    opt = build_optimizer(_cfg(OPTIMIZER="SGD", MOMENTUM=0.8), ToyFastInst())
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.8 for g in opt.param_groups)


def test_unknown_optimizer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER.*LAMB"):
        build_optimizer(_cfg(OPTIMIZER="LAMB"), ToyFastInst())


def _grad_norm_after_step(opt: torch.optim.Optimizer, model: nn.Module) -> float:
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0) if p.requires_grad else None
    opt.step()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    )


def test_full_model_clipping_inside_step() -> None:
    model = ToyFastInst()
    cfg = _cfg(
        **{
            "CLIP_GRADIENTS.ENABLED": True,
            "CLIP_GRADIENTS.CLIP_TYPE": "full_model",
            "CLIP_GRADIENTS.CLIP_VALUE": 0.5,
        }
    )
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    assert _grad_norm_after_step(opt, model) == pytest.approx(0.5, rel=1e-4)


def test_no_clipping_by_default_and_detectron2_clipping_otherwise() -> None:
    model = ToyFastInst()
    assert _grad_norm_after_step(build_optimizer(_cfg(), model), model) > 1.0
    cfg = _cfg(
        **{
            "CLIP_GRADIENTS.ENABLED": True,
            "CLIP_GRADIENTS.CLIP_TYPE": "value",
            "CLIP_GRADIENTS.CLIP_VALUE": 0.25,
        }
    )
    opt = build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0) if p.requires_grad else None
    opt.step()
    assert max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None) == 0.25
