#!/usr/bin/env python
"""The checks that need an NVIDIA GPU, in one run (CI has no GPU; run this on a machine with one).

1. Golden parity on CUDA: the official implementation's outputs (tests/reference/golden) from our model on the
   GPU in float32, with the tolerances of tests/modeling/test_golden.py.
2. fp16 / bf16 inference on CUDA: the same golden inputs under autocast (the predictor's `precision`), compared
   with float32 on the GPU: score differences and mask IoU of the final instances, classes that agree.
3. Training on CUDA with the official AMP setting (SOLVER.AMP.ENABLED: detectron2's AMPTrainer, fp16 autocast and a
   GradScaler): train_net.py on the synthetic data with the tiny config, a `--resume` that continues it, and
   `--eval-only` on the result, each a separate process; the loss must stay finite and AP must be printed.

    python tools/check_cuda.py [--skip-training]

Prints one line per check and "cuda checks: N passed, M failed" last; exits 1 when any failed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detectron2.modeling import build_model  # noqa: E402

from fastinst.data import ensure_synthetic_dataset  # noqa: E402
from fastinst.inference import inference_context, prepare_for_inference  # noqa: E402
from tests.conftest import REFERENCE, load_recipe_weights, make_cfg, relative_error  # noqa: E402

GOLDEN_CASES = [
    ("r50_d1_160x224", "fastinst_R50_ppm-fpn_x1_576"),
    ("r50_d3_150x211", "fastinst_R50_ppm-fpn_x3_640"),
]
RESULTS: list[tuple[str, bool, str]] = []


def report(name: str, ok: bool, detail: str) -> None:
    RESULTS.append((name, ok, detail))
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)


DEVICE = "cuda"


def _golden_model(config: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(make_cfg(config, ["MODEL.DEVICE", DEVICE]))
    load_recipe_weights(model)
    return model.eval()


def _instances(model, inputs, precision: str = "fp32"):
    with inference_context(model, precision):
        instances = model(inputs)[0]["instances"].to("cpu")
    order = torch.argsort(instances.scores.float(), descending=True, stable=True)
    return instances[order]


def check_golden() -> None:
    # The references are float32 through and through. CUDA's default lets cuDNN convolutions use TF32 (10-bit
    # mantissa), which moves the proposal logits by ~1e-3 and so can change the top-k query selection: parity is
    # checked with TF32 off.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    for case, config in GOLDEN_CASES:
        ref = np.load(REFERENCE / "golden" / f"{case}.npz")
        model = _golden_model(config)
        image = torch.from_numpy(ref["image"])
        inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]
        with torch.no_grad():
            images = model.preprocess(inputs)
            outputs = model.sem_seg_head(model.backbone(images.tensor))
        errors = {
            k: relative_error(outputs[k], ref[k])
            for k in ("proposal_cls_logits", "pred_logits", "pred_masks")
        }
        same_topk = np.array_equal(outputs["topk_indices"].cpu().numpy(), ref["topk_indices"])
        inst = _instances(model, inputs)
        score_gap = float(np.abs(inst.scores.numpy() - ref["instances_scores"]).max())
        ok = same_topk and max(errors.values()) <= 1e-4 and score_gap <= 1e-4
        detail = ", ".join(f"{k} rel err {v:.1e}" for k, v in errors.items())
        report(
            f"golden {case} ({DEVICE} fp32, TF32 off)",
            ok,
            f"{detail}, top-k equal {same_topk}, max score gap {score_gap:.1e}",
        )

        reference = inst
        for precision in ("fp16", "bf16") if DEVICE == "cuda" else ("bf16",):
            low = _golden_model(config)
            prepare_for_inference(low, precision)
            got = _instances(low, inputs, precision)
            n = min(10, len(got), len(reference))
            masks_a = reference.pred_masks[:n].flatten(1) > 0.5
            masks_b = got.pred_masks[:n].flatten(1) > 0.5
            inter = (masks_a & masks_b).sum(1).float()
            union = (masks_a | masks_b).sum(1).float()
            iou = float(
                torch.where(union > 0, inter / union.clamp(min=1), 1.0).mean()
            )  # both empty: equal
            gap = float((got.scores[:n].float() - reference.scores[:n]).abs().max())
            classes = float((got.pred_classes[:n] == reference.pred_classes[:n]).float().mean())
            ok = np.isfinite(gap) and iou >= 0.9 and gap <= 0.05
            report(
                f"golden {case} ({DEVICE} {precision} vs fp32)",
                ok,
                f"top-{n} instances: mean mask IoU {iou:.3f}, max score gap {gap:.4f}, same class {classes:.0%}",
            )


def _run(args: list[str], log: Path) -> tuple[int, str, float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    text = proc.stdout + proc.stderr
    log.write_text(text)
    return proc.returncode, text, time.perf_counter() - start


def check_training(workdir: Path) -> None:
    ensure_synthetic_dataset()  # train_net reads datasets/synthetic; the quickstart would generate it
    out = workdir / "train"
    common = ["MODEL.DEVICE", DEVICE, "SOLVER.AMP.ENABLED", "True", "OUTPUT_DIR", str(out)]
    config = ["--config-file", "configs/synthetic/tiny-test.yaml"]
    steps = ["SOLVER.MAX_ITER", "30", "SOLVER.CHECKPOINT_PERIOD", "20", "TEST.EVAL_PERIOD", "0"]
    rc, text, seconds = _run(["train_net.py", *config, *common, *steps], workdir / "train.log")
    losses = [float(x) for x in re.findall(r"total_loss: ([0-9.eE+-]+|nan|inf)", text)]
    amp = (
        "float16 autocast with a GradScaler" if DEVICE == "cuda" else "bfloat16 autocast"
    ) in text
    ok = (
        rc == 0
        and amp
        and losses
        and all(np.isfinite(losses))
        and (out / "model_final.pth").exists()
    )
    report(
        f"train_net on {DEVICE}, AMP on, 30 iterations",
        ok,
        f"rc {rc}, {seconds:.0f} s, total_loss {losses[0] if losses else '?'} -> {losses[-1] if losses else '?'}, "
        f"AMPTrainer used {amp}" + ("" if ok else f"\n{text[-3000:]}"),
    )

    resume_steps = [
        "SOLVER.MAX_ITER",
        "40",
        "SOLVER.CHECKPOINT_PERIOD",
        "20",
        "TEST.EVAL_PERIOD",
        "0",
    ]
    rc, text, seconds = _run(
        ["train_net.py", *config, "--resume", *common, *resume_steps], workdir / "resume.log"
    )
    resumed = re.search(r"Starting training from iteration (\d+)", text)
    ok = rc == 0 and resumed is not None and int(resumed.group(1)) == 30
    report(
        f"train_net --resume on {DEVICE}",
        ok,
        f"rc {rc}, {seconds:.0f} s, started from iteration {resumed.group(1) if resumed else '?'}"
        + ("" if ok else f"\n{text[-3000:]}"),
    )

    weights = str(out / "model_final.pth")
    rc, text, seconds = _run(
        ["train_net.py", *config, "--eval-only", *common, "MODEL.WEIGHTS", weights],
        workdir / "eval.log",
    )
    segm = re.search(
        r"Evaluation results for segm:\s*\n\|\s*AP\s*\|.*\n\|[-:| ]+\|\n\|\s*([0-9.nan]+)\s*\|",
        text,
    )
    ok = rc == 0 and segm is not None
    report(
        f"train_net --eval-only on {DEVICE}",
        ok,
        f"rc {rc}, {seconds:.0f} s, segm AP {segm.group(1) if segm else '?'}"
        + ("" if ok else f"\n{text[-3000:]}"),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where logs and checkpoints go (default: a temp dir)",
    )
    parser.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu"],
        help="cpu: the same checks on the CPU (bf16), to try this script",
    )
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("No CUDA device: these checks need an NVIDIA GPU.", file=sys.stderr)
        return 2
    golden = REFERENCE / "golden"
    if not golden.is_dir():
        print(
            f"error: {golden} not found: the golden references are part of the repository; restore them with git.",
            file=sys.stderr,
        )
        return 2
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}", flush=True)
    check_golden()
    if not args.skip_training:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fastinst-cuda-"))
        workdir.mkdir(parents=True, exist_ok=True)
        check_training(workdir)
    failed = sum(not ok for _, ok, _ in RESULTS)
    print(f"{DEVICE} checks: {len(RESULTS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
