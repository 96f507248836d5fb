"""Mixed precision for the training step: detectron2's AMPTrainer on CUDA, bfloat16 autocast on CPU.

The official configs set SOLVER.AMP.ENABLED True, which means CUDA fp16 autocast with a GradScaler
(detectron2 `AMPTrainer`). On a CPU there is no fp16 autocast worth using and no GradScaler, so:

- CPU with native bfloat16 (AVX512-BF16 or AMX): `CPUAutocastTrainer`, bf16 autocast for the forward pass and the
  loss, gradients in the parameters' dtype (float32), no loss scaling (bf16 has float32's exponent range);
- any other CPU: plain float32 training (`SimpleTrainer`) and a logged warning.
"""

from __future__ import annotations

import logging
import time

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer

logger = logging.getLogger(__name__)


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (so bf16 autocast is faster, not slower, than float32)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    for name in checks:
        fn = getattr(torch.cpu, name, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except Exception:  # a private probe: any failure means "no"
                continue
    return False


class CPUAutocastTrainer(SimpleTrainer):
    """`SimpleTrainer` whose forward pass runs under `torch.autocast("cpu", dtype=precision)`."""

    def __init__(
        self, model, data_loader, optimizer, precision: torch.dtype = torch.bfloat16, **kwargs
    ):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.precision = precision

    def run_step(self) -> None:
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast("cpu", dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                loss_dict = {"total_loss": loss_dict}
            losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)  # raises FloatingPointError on a non-finite loss
        self.optimizer.step()


def build_step_trainer(
    model: torch.nn.Module,
    data_loader,
    optimizer: torch.optim.Optimizer,
    *,
    amp_enabled: bool,
    device: str,
) -> SimpleTrainer:
    """The object that runs one training iteration, per SOLVER.AMP.ENABLED and the device."""
    if not amp_enabled:
        return SimpleTrainer(model, data_loader, optimizer)
    if torch.device(device).type == "cuda":
        logger.info(
            "SOLVER.AMP.ENABLED on CUDA: float16 autocast with a GradScaler (detectron2 AMPTrainer)."
        )
        return AMPTrainer(model, data_loader, optimizer)
    if cpu_supports_bf16():
        logger.info("SOLVER.AMP.ENABLED on CPU: training with bfloat16 autocast.")
        return CPUAutocastTrainer(model, data_loader, optimizer, precision=torch.bfloat16)
    logger.warning(
        "SOLVER.AMP.ENABLED is True but this CPU has no native bfloat16 support; training in float32. "
        "Set SOLVER.AMP.ENABLED False to silence this warning."
    )
    return SimpleTrainer(model, data_loader, optimizer)
