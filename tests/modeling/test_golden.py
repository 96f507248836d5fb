"""Numerical parity with the official implementation (tests/reference/golden, tolerances from its README)."""

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances

from fastinst.modeling import point_sampling
from tests.conftest import REFERENCE, load_recipe_weights, make_cfg, relative_error

GOLDEN = REFERENCE / "golden"
CASES = [
    ("r50_d1_160x224", "fastinst_R50_ppm-fpn_x1_576"),
    ("r50_d3_150x211", "fastinst_R50_ppm-fpn_x3_640"),
]


@pytest.mark.parametrize("case,config", CASES)
def test_inference_matches_official(case, config):
    ref = np.load(GOLDEN / f"{case}.npz")
    torch.manual_seed(0)
    model = build_model(make_cfg(config))
    load_recipe_weights(model)
    model.eval()
    image = torch.from_numpy(ref["image"])
    inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]

    with torch.no_grad():
        images = model.preprocess(inputs)
        outputs = model.sem_seg_head(model.backbone(images.tensor))
        instances = model(inputs)[0]["instances"]

    np.testing.assert_array_equal(outputs["topk_indices"].numpy(), ref["topk_indices"])
    for key in ("proposal_cls_logits", "pred_logits", "pred_masks"):
        assert outputs[key].shape == ref[key].shape, key
        assert relative_error(outputs[key], ref[key]) <= 1e-4, key

    # instances, compared sorted by score
    order = torch.argsort(instances.scores, descending=True, stable=True)
    scores = instances.scores[order].numpy()
    classes = instances.pred_classes[order].numpy()
    masks = instances.pred_masks[order].numpy().astype(np.uint8)
    ref_scores = ref["instances_scores"]
    shape = tuple(ref["instances_mask_shape"])
    ref_masks = np.unpackbits(ref["instances_pred_masks"], axis=-1)[..., : shape[2]]
    assert masks.shape == shape and len(scores) == len(ref_scores)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-4)
    gaps = np.abs(np.diff(ref_scores))
    distinct = np.ones(len(ref_scores), dtype=bool)
    distinct[:-1] &= gaps > 1e-5
    distinct[1:] &= gaps > 1e-5
    ref_classes = ref["instances_pred_classes"]
    np.testing.assert_array_equal(classes[distinct], ref_classes[distinct])
    if distinct.any():
        assert (masks[distinct] == ref_masks[distinct]).mean() >= 0.999
    # Tied scores have no defined order (the official top-k is unsorted); the kept (query, class) pairs are
    # the same set, so the classes agree as a multiset and the masks in total.
    np.testing.assert_array_equal(np.sort(classes), np.sort(ref_classes))
    assert abs(int(masks.sum()) - int(ref_masks.sum())) <= 1e-3 * ref_masks.size


def _training_batch(ref) -> list[dict]:
    width = int(ref["gt_mask_shape"][1])
    batch = []
    for b in range(2):
        image = torch.from_numpy(ref[f"image_{b}"])
        instances = Instances(tuple(image.shape[1:]))
        instances.gt_classes = torch.from_numpy(ref[f"gt_classes_{b}"])
        masks = np.unpackbits(ref[f"gt_masks_{b}"], axis=-1)[..., :width]
        instances.gt_masks = torch.from_numpy(masks.astype(bool))
        batch.append(
            {
                "image": image,
                "height": image.shape[1],
                "width": image.shape[2],
                "instances": instances,
            }
        )
    return batch


def test_training_losses_and_gradients_match_official(monkeypatch):
    ref = np.load(GOLDEN / "train_r50_d3_2x160x192.npz")
    cfg = make_cfg(
        "fastinst_R50_ppm-fpn_x3_640",
        ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 10, "MODEL.FASTINST.TRAIN_NUM_POINTS", 2048],
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    load_recipe_weights(model)
    model.train()

    fixed = torch.from_numpy(ref["fixed_points"])
    calls = {"uniform": 0, "uncertain": 0}

    def uniform(n, p, device):
        calls["uniform"] += 1
        return fixed[:p].expand(n, p, 2)

    def uncertain(logits, p, *args):
        calls["uncertain"] += 1
        return fixed[:p].expand(logits.shape[0], p, 2)

    monkeypatch.setattr(point_sampling, "sample_uniform_points", uniform)
    monkeypatch.setattr(point_sampling, "sample_uncertain_points", uncertain)

    losses = model(_training_batch(ref))
    assert list(losses) == list(ref["loss_names"])
    for name, expected in zip(ref["loss_names"], ref["loss_values"]):
        assert torch.isfinite(losses[name])
        assert abs(losses[name].item() - expected) <= 1e-4 * abs(expected), name
    # every random draw went through the seam: 2 images x (decoder matching + main + 3 unguided aux outputs)
    assert calls["uniform"] == 2 * 5
    assert calls["uncertain"] == 1 + 6  # one per output with matched masks (main + 6 aux)

    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    for name, expected in zip(ref["grad_names"], ref["grad_norms"]):
        norm = params[name].grad.norm().item()
        assert abs(norm - expected) <= 1e-3 * expected, name
