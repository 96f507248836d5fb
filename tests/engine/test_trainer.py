"""The FastInst trainer on CPU: learning, non-finite losses, AMP fallback, evaluator dispatch."""

from __future__ import annotations

import json
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import SimpleTrainer
from detectron2.evaluation import COCOEvaluator

from fastinst.engine import Trainer
from fastinst.engine import amp as amp_module
from fastinst.engine.amp import CPUAutocastTrainer, build_step_trainer
from fastinst.engine.optimizer import NORM_MODULE_TYPES, build_optimizer
from fastinst.modeling.meta_arch import FastInst


def test_fixed_batch_loss_goes_down(tiny_synthetic, make_tiny_cfg) -> None:
    """A few optimizer steps on one batch lower the total loss (the model, losses and optimizer fit)."""
    torch.manual_seed(0)
    cfg = make_tiny_cfg("SOLVER.BASE_LR", 1e-3)
    model = Trainer.build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    batch = next(iter(Trainer.build_train_loader(cfg)))
    losses = []
    for _ in range(16):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses


def test_real_model_param_groups(make_tiny_cfg) -> None:
    """On the real model: aux-query embeddings and norms get no decay, meta_pos_embed and biases do."""
    cfg = make_tiny_cfg()
    model = Trainer.build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    wd = {id(g["params"][0]): g["weight_decay"] for g in optimizer.param_groups}
    lr = {id(g["params"][0]): g["lr"] for g in optimizer.param_groups}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(optimizer.param_groups) == len(trainable)
    modules = dict(model.named_modules())
    for name, p in trainable:
        owner = modules[name.rpartition(".")[0]]
        if isinstance(owner, (torch.nn.Embedding, *NORM_MODULE_TYPES)):
            assert wd[id(p)] == 0.0, name
        elif "meta_pos_embed" in name or name.endswith(".bias"):
            assert wd[id(p)] == cfg.SOLVER.WEIGHT_DECAY, name
        expected_lr = cfg.SOLVER.BASE_LR * (
            cfg.SOLVER.BACKBONE_MULTIPLIER if name.startswith("backbone.") else 1.0
        )
        assert lr[id(p)] == pytest.approx(expected_lr), name
    assert any(isinstance(m, torch.nn.Embedding) for m in modules.values())
    assert any("meta_pos_embed" in n for n, _ in trainable)


def test_nan_loss_raises_and_keeps_last_checkpoint(
    tiny_synthetic, make_tiny_cfg, monkeypatch
) -> None:
    cfg = make_tiny_cfg("SOLVER.MAX_ITER", 10, "SOLVER.CHECKPOINT_PERIOD", 2, "DATASETS.TEST", ())
    original_forward = FastInst.forward
    calls = {"train": 0}

    def forward(self, batched_inputs):
        out = original_forward(self, batched_inputs)
        if self.training:
            calls["train"] += 1
            if calls["train"] == 4:  # iteration 3, after the checkpoint of iteration 1
                key = next(iter(out))
                out = {**out, key: out[key] * float("nan")}
        return out

    monkeypatch.setattr(FastInst, "forward", forward)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError, match="iteration=3"):
        trainer.train()

    out = cfg.OUTPUT_DIR
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000001.pth"
    assert not os.path.exists(os.path.join(out, "model_0000003.pth"))
    ckpt = torch.load(
        os.path.join(out, "model_0000001.pth"), map_location="cpu", weights_only=False
    )
    assert ckpt["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    fresh = Trainer.build_model(cfg)
    DetectionCheckpointer(fresh).load(os.path.join(out, "model_0000001.pth"))


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, batch):
        return {"loss": self.linear(batch).pow(2).mean()}


def _toy_loader():
    while True:
        yield torch.randn(8, 4)


def test_cpu_bf16_autocast_step() -> None:
    model = _Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = CPUAutocastTrainer(model, _toy_loader(), opt)
    from detectron2.utils.events import EventStorage

    before = model.linear.weight.detach().clone()
    with EventStorage(0) as trainer.storage:
        trainer.run_step()
    assert model.linear.weight.dtype == torch.float32
    assert not torch.equal(before, model.linear.weight)


def test_amp_on_cpu_never_crashes(monkeypatch, caplog) -> None:
    model, loader = _Toy(), _toy_loader()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plain = build_step_trainer(model, loader, opt, amp_enabled=False, device="cpu")
    assert type(plain) is SimpleTrainer

    monkeypatch.setattr(amp_module, "cpu_supports_bf16", lambda: True)
    assert isinstance(
        build_step_trainer(model, loader, opt, amp_enabled=True, device="cpu"), CPUAutocastTrainer
    )
    monkeypatch.setattr(amp_module, "cpu_supports_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        fallback = build_step_trainer(model, loader, opt, amp_enabled=True, device="cpu")
    assert type(fallback) is SimpleTrainer
    assert "float32" in caplog.text


def test_evaluator_dispatch(tiny_synthetic, make_tiny_cfg, tmp_path) -> None:
    cfg = make_tiny_cfg()
    evaluator = Trainer.build_evaluator(cfg, "synthetic_val")
    assert isinstance(evaluator, COCOEvaluator)
    assert evaluator._tasks == ("bbox", "segm")
    assert evaluator._output_dir == os.path.join(cfg.OUTPUT_DIR, "inference")

    DatasetCatalog.register("engine_test_unknown", lambda: [])
    MetadataCatalog.get("engine_test_unknown").set(evaluator_type="sem_seg")
    try:
        with pytest.raises(NotImplementedError, match="engine_test_unknown"):
            Trainer.build_evaluator(cfg, "engine_test_unknown")
    finally:
        DatasetCatalog.remove("engine_test_unknown")
        MetadataCatalog.remove("engine_test_unknown")
    assert json.loads(json.dumps(list(cfg.DATASETS.TEST))) == ["synthetic_val"]
