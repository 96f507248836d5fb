"""fastinst.inference: precision checks, optimisations equal to the unoptimised model, bf16 close to fp32."""

import numpy as np
import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

from fastinst.inference import (
    Optimizations,
    check_precision,
    fold_batchnorm,
    inference_context,
    prepare_for_inference,
)
from tests.conftest import (
    REFERENCE,
    load_recipe_weights,
    make_cfg,
    random_image,
    relative_error,
    tiny_model,
)

GOLDEN = REFERENCE / "golden"


def run(model, inputs, precision="fp32"):
    """Decoder outputs and instances of one forward pass."""
    with inference_context(model, precision):
        images = model.preprocess(inputs)
        outputs = model.sem_seg_head(model.backbone(images.tensor))
        instances = model(inputs)[0]["instances"]
    return outputs, instances


def golden_model(config: str, precision: str = "fp32", optimizations=None):
    torch.manual_seed(0)
    model = build_model(make_cfg(config))
    load_recipe_weights(model)
    return prepare_for_inference(model, precision, optimizations=optimizations)


def golden_inputs(case: str):
    ref = np.load(GOLDEN / f"{case}.npz")
    image = torch.from_numpy(ref["image"])
    return ref, [{"image": image, "height": image.shape[1], "width": image.shape[2]}]


# -- precision checks -----------------------------------------------------------------------------------------


def test_fp16_on_cpu_raises_a_clear_error():
    with pytest.raises(ValueError, match="needs a CUDA device; use 'bf16'"):
        prepare_for_inference(tiny_model(), "fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision("int8", "cpu")


def test_inference_context_uses_autocast_only_without_cast_weights():
    model = prepare_for_inference(
        tiny_model(), "bf16", optimizations=Optimizations(bf16_weights=False)
    )
    with inference_context(model, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.is_inference_mode_enabled()
    model = prepare_for_inference(tiny_model(), "bf16")
    assert next(model.backbone.parameters()).dtype == torch.bfloat16
    with inference_context(model, "bf16"):
        assert not torch.is_autocast_enabled("cpu")


# -- exact optimisations: equal to the unoptimised model within the golden tolerances --------------------------


@pytest.mark.parametrize(
    "case,config",
    [
        ("r50_d1_160x224", "fastinst_R50_ppm-fpn_x1_576"),
        ("r50_d3_150x211", "fastinst_R50_ppm-fpn_x3_640"),
    ],
)
def test_optimised_fp32_model_meets_the_golden_tolerances(case, config):
    ref, inputs = golden_inputs(case)
    outputs, instances = run(golden_model(config), inputs)
    np.testing.assert_array_equal(outputs["topk_indices"].numpy(), ref["topk_indices"])
    for key in ("proposal_cls_logits", "pred_logits", "pred_masks"):
        assert relative_error(outputs[key], ref[key]) <= 1e-4, key
    np.testing.assert_allclose(instances.scores.numpy(), ref["instances_scores"], rtol=0, atol=1e-4)
    shape = tuple(ref["instances_mask_shape"])
    ref_masks = np.unpackbits(ref["instances_pred_masks"], axis=-1)[..., : shape[2]]
    assert (instances.pred_masks.numpy().astype(np.uint8) == ref_masks).mean() >= 0.999


def test_official_path_equals_the_default_model_exactly():
    _, inputs = golden_inputs("r50_d3_150x211")
    plain = golden_model("fastinst_R50_ppm-fpn_x3_640", optimizations=Optimizations.off())
    assert not plain.fast_postprocessing
    torch.manual_seed(0)
    default = build_model(make_cfg("fastinst_R50_ppm-fpn_x3_640")).eval()
    load_recipe_weights(default)
    (a_out, a), (b_out, b) = run(plain, inputs), run(default, inputs)
    assert torch.equal(a_out["pred_masks"], b_out["pred_masks"])
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_masks, b.pred_masks)
    assert torch.equal(a.pred_classes, b.pred_classes)


def test_tiny_model_optimisations_are_exact_within_tolerance():
    torch.manual_seed(0)
    base = tiny_model()
    load_recipe_weights(base)  # non-trivial BatchNorm statistics to fold
    optimised = tiny_model()
    optimised.load_state_dict(base.state_dict())
    prepare_for_inference(base, optimizations=Optimizations.off())
    prepare_for_inference(optimised)
    inputs = [{"image": random_image(64, 96), "height": 96, "width": 144}]
    (a_out, a), (b_out, b) = run(base, inputs), run(optimised, inputs)
    assert torch.equal(a_out["topk_indices"], b_out["topk_indices"])
    for key in ("pred_logits", "pred_masks"):
        assert relative_error(b_out[key], a_out[key]) <= 1e-4, key
    torch.testing.assert_close(b.scores, a.scores, rtol=0, atol=1e-4)
    assert (a.pred_masks == b.pred_masks).float().mean() >= 0.999


def test_fold_batchnorm_counts_and_keeps_features():
    torch.manual_seed(0)
    model = build_model(make_cfg("fastinst_R50_ppm-fpn_x1_576")).eval()
    load_recipe_weights(model)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = model.backbone(x)
        assert fold_batchnorm(model.backbone) == 53  # stem + 16 blocks x 3 + 4 shortcuts
        after = model.backbone(x)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    for name in before:
        assert relative_error(after[name], before[name]) < 1e-5, name


def test_fold_batchnorm_on_the_resnet_d_backbone_keeps_dcn_norms():
    torch.manual_seed(0)
    model = build_model(make_cfg("fastinst_R50-vd-dcn_ppm-fpn_x1_576")).eval()
    load_recipe_weights(model)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = model.backbone(x)
        folded = fold_batchnorm(model.backbone)
        after = model.backbone(x)
    left = [m for m in model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(left) == 6 + 3  # bn2 after the deformable conv in every block of res4 and res5
    assert folded == 2 + 1 + 16 * 3 + 4 - len(left)  # stem convs 2 + bn1, blocks, shortcuts
    for name in before:
        assert relative_error(after[name], before[name]) < 1e-5, name


def test_positional_embedding_cache_is_reused_and_invalidated():
    model = tiny_model().eval()
    decoder = model.sem_seg_head.predictor
    with torch.no_grad():
        first = decoder.positional_embeddings((8, 12), (4, 6))
        assert decoder.positional_embeddings((8, 12), (4, 6))[0] is first[0]  # cached
        decoder.meta_pos_embed.mul_(2)  # in-place change (as load_state_dict does)
        second = decoder.positional_embeddings((8, 12), (4, 6))
    torch.testing.assert_close(second[0], 2 * first[0])
    # with gradients (or in training) nothing is cached, so the embedding stays differentiable
    assert decoder.positional_embeddings((8, 12), (4, 6))[0].requires_grad
    decoder.cache_positional_embeddings = False
    with torch.no_grad():
        assert decoder.positional_embeddings((8, 12), (4, 6))[0] is not second[0]


# -- bf16: close to fp32 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bf16_weights", [True, False], ids=["cast-weights", "autocast"])
@pytest.mark.parametrize(
    "case,config",
    [
        ("r50_d1_160x224", "fastinst_R50_ppm-fpn_x1_576"),
        ("r50_d3_150x211", "fastinst_R50_ppm-fpn_x3_640"),
    ],
)
def test_bf16_instances_are_close_to_fp32(case, config, bf16_weights):
    """With the recipe weights the golden cases give empty (D1) or full (D3) masks, so the logits of the queries
    both precisions pick are compared too; the picks themselves differ where proposal scores are within bf16
    rounding of each other."""
    _, inputs = golden_inputs(case)
    fp32_out, fp32 = run(golden_model(config, "fp32", Optimizations.off()), inputs)
    opts = Optimizations(bf16_weights=bf16_weights)
    bf16_out, bf16 = run(golden_model(config, "bf16", opts), inputs, "bf16")

    assert bf16.pred_masks.dtype == torch.bool and bf16.scores.dtype == torch.float32
    picked_fp32 = fp32_out["topk_indices"][0].tolist()
    picked_bf16 = bf16_out["topk_indices"][0].tolist()
    common = [p for p in picked_fp32 if p in picked_bf16]
    assert len(common) >= 0.9 * len(picked_fp32)
    ia = [picked_fp32.index(p) for p in common]
    ib = [picked_bf16.index(p) for p in common]
    assert relative_error(bf16_out["pred_logits"][0, ib], fp32_out["pred_logits"][0, ia]) < 0.05
    assert relative_error(bf16_out["pred_masks"][0, ib], fp32_out["pred_masks"][0, ia]) < 0.05

    top = 10
    torch.testing.assert_close(bf16.scores[:top], fp32.scores[:top], rtol=0, atol=5e-3)
    nonempty = fp32.pred_masks[:top].flatten(1).any(1)
    if nonempty.any():
        a, b = fp32.pred_masks[:top].bool(), bf16.pred_masks[:top].bool()
        iou = (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1).clamp(min=1)
        assert iou[nonempty].mean() > 0.9


@pytest.mark.slow
def test_compiled_model_matches_eager():
    """torch.compile (inductor, frozen weights) of backbone, pixel decoder and decoder; about a minute on a CPU."""
    torch.manual_seed(0)
    eager = tiny_model()
    load_recipe_weights(eager)
    compiled = tiny_model()
    compiled.load_state_dict(eager.state_dict())
    prepare_for_inference(eager)
    prepare_for_inference(compiled, compile=True)
    inputs = [{"image": random_image(64, 96)}]
    (a_out, a), (b_out, b) = run(eager, inputs), run(compiled, inputs)
    assert torch.equal(a_out["topk_indices"], b_out["topk_indices"])
    assert relative_error(b_out["pred_masks"], a_out["pred_masks"]) <= 1e-4
    torch.testing.assert_close(b.scores, a.scores, rtol=0, atol=1e-4)
