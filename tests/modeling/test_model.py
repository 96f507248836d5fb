"""End-to-end behaviour of the FastInst model on a tiny config (CPU)."""

import pytest
import torch

from fastinst.modeling import postprocessing
from fastinst.modeling.decoder.fastinst_decoder import attention_mask_from_logits, gt_attention_mask
from fastinst.modeling.decoder.query_proposal import local_maximum_score
from fastinst.modeling.postprocessing import instance_inference, instance_inference_reference
from tests.conftest import random_image, random_instances, tiny_model

OFFICIAL_LOSS_KEYS = ["loss_ce", "loss_mask", "loss_dice"]


def expected_loss_keys(dec_layers: int) -> list[str]:
    keys = list(OFFICIAL_LOSS_KEYS)
    for i in range(2 * dec_layers):
        keys += [f"{k}_{i}" for k in OFFICIAL_LOSS_KEYS]
    return keys + ["loss_proposal"]


def training_batch():
    return [
        {"image": random_image(64, 96, 0), "instances": random_instances(64, 96, [0, 3], 0)},
        {"image": random_image(80, 64, 1), "instances": random_instances(80, 64, [1, 2, 4], 1)},
    ]


def test_decoder_output_shapes():
    model = tiny_model()
    model.eval()
    images = model.preprocess([{"image": random_image(70, 100)}])  # padded to 96 x 128
    with torch.no_grad():
        out = model.sem_seg_head(model.backbone(images.tensor))
    assert out["pred_logits"].shape == (1, 16, 6)
    assert out["pred_masks"].shape == (1, 16, 12, 16)
    assert out["proposal_cls_logits"].shape == (1, 6, 6, 8)
    assert out["topk_indices"].shape == (1, 16)
    assert out["query_locations"] is None
    assert len(out["aux_outputs"]) == 2 and all(
        a["pred_logits"] is None for a in out["aux_outputs"]
    )


def test_training_returns_every_official_loss_and_all_gradients_are_finite():
    model = tiny_model(train=True)
    losses = model(training_batch())
    assert list(losses) == expected_loss_keys(2)
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), name


def test_dense_proposal_targets_change_only_the_proposal_loss_and_add_no_parameters():
    official = tiny_model(train=True)
    model = tiny_model(["MODEL.FASTINST.DENSE_PROPOSAL_TARGETS", True], train=True)
    assert (
        model.state_dict().keys() == official.state_dict().keys()
    )  # official checkpoints still fit
    model.load_state_dict(official.state_dict())
    batch = training_batch()
    torch.manual_seed(0)  # the same random points for the matcher and the mask losses
    losses = model(batch)
    torch.manual_seed(0)
    official_losses = official(batch)
    assert list(losses) == expected_loss_keys(2)
    assert losses["loss_proposal"].item() != pytest.approx(official_losses["loss_proposal"].item())
    for key in expected_loss_keys(2)[:-1]:
        assert losses[key].item() == pytest.approx(official_losses[key].item(), rel=1e-5), key


def test_training_aux_outputs_follow_the_official_order():
    model = tiny_model(train=True)
    batch = training_batch()
    images = model.preprocess(batch)
    targets = model.prepare_targets(batch, images)
    out = model.sem_seg_head(model.backbone(images.tensor), targets)
    aux = out["aux_outputs"]
    assert len(aux) == 2 * 2  # guided 0, 1; initial prediction; normal layer 0
    assert [a["pred_matching_indices"] is not None for a in aux] == [True, True, False, False]
    assert out["query_locations"].shape == (2, 16, 2)
    assert ((out["query_locations"] >= 0) & (out["query_locations"] <= 1)).all()


def test_training_without_the_gt_mask_guided_branch():
    official = tiny_model(train=True)
    model = tiny_model(["MODEL.FASTINST.GT_MASK_GUIDED", False], train=True)
    assert model.state_dict().keys() == official.state_dict().keys()
    batch = training_batch()
    images = model.preprocess(batch)
    targets = model.prepare_targets(batch, images)
    aux = model.sem_seg_head(model.backbone(images.tensor), targets)["aux_outputs"]
    assert len(aux) == 2  # initial prediction; normal layer 0
    assert all(a["pred_matching_indices"] is None for a in aux)
    losses = model(batch)
    assert list(losses) == expected_loss_keys(
        1
    )  # main, initial prediction (_0), layer 0 (_1), proposal
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()  # inference does not use the branch either way
    official.eval()
    official.load_state_dict(model.state_dict())
    with torch.no_grad():
        image = [{"image": random_image(64, 96, 2)}]
        ours, theirs = model(image)[0]["instances"], official(image)[0]["instances"]
    torch.testing.assert_close(ours.scores, theirs.scores)


def test_image_without_annotations_trains():
    model = tiny_model(train=True)
    batch = training_batch()
    batch[1]["instances"] = random_instances(80, 64, [], 1)
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    batch = [batch[1]]  # a batch with no instance at all
    losses = model(batch)
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    assert losses["loss_ce"].item() > 0
    sum(losses.values()).backward()


def test_training_input_without_instances_is_a_clear_error():
    model = tiny_model(train=True)
    with pytest.raises(ValueError, match="Training input 0 has no 'instances'"):
        model([{"image": random_image(64, 64)}])


def test_polygon_masks_are_a_clear_error():
    from detectron2.structures import PolygonMasks

    model = tiny_model(train=True)
    batch = training_batch()[:1]
    batch[0]["instances"].gt_masks = PolygonMasks([[[0, 0, 10, 0, 10, 10]], [[0, 0, 5, 0, 5, 5]]])
    with pytest.raises(ValueError, match="fastinst_instance"):
        model(batch)


def test_small_input_error_and_pad_policy():
    model = tiny_model()
    model.eval()
    with pytest.raises(ValueError, match="fewer than the 16 object queries"):
        model([{"image": random_image(32, 32)}])
    model = tiny_model(["MODEL.FASTINST.SMALL_INPUT", "pad"]).eval()
    with torch.no_grad():
        (result,) = model([{"image": random_image(32, 32), "height": 40, "width": 50}])
    assert result["instances"].image_size == (40, 50)
    assert result["instances"].pred_masks.shape[1:] == (40, 50)


def test_batch_of_two_equals_two_batches_of_one():
    """Same-size images get identical padding, so batching must not change any output."""
    model = tiny_model().eval()
    inputs = [{"image": random_image(64, 96, s)} for s in (3, 4)]
    with torch.no_grad():
        together = model(inputs)
        apart = [model([x])[0] for x in inputs]
    for a, b in zip(together, apart):
        a, b = a["instances"], b["instances"]
        torch.testing.assert_close(
            a.scores, b.scores, rtol=1e-4, atol=1e-5
        )  # float summation order
        assert torch.equal(a.pred_classes, b.pred_classes)
        assert (a.pred_masks != b.pred_masks).float().mean() < 1e-3


def test_eval_output_instances_have_real_boxes_and_requested_size():
    model = tiny_model().eval()
    with torch.no_grad():
        (result,) = model([{"image": random_image(64, 96), "height": 128, "width": 192}])
    inst = result["instances"]
    assert inst.image_size == (128, 192)
    assert inst.pred_masks.shape == (16 * 5 if 16 * 5 < 100 else 100, 128, 192)
    assert inst.pred_masks.dtype == torch.bool
    assert torch.all(inst.scores[:-1] >= inst.scores[1:])  # sorted
    for mask, box in zip(inst.pred_masks, inst.pred_boxes.tensor):
        if mask.any():
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [
                xs.min().item(),
                ys.min().item(),
                xs.max().item() + 1,
                ys.max().item() + 1,
            ]
        else:
            assert box.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize(
    "chunk_pixels", [1, 1 << 22]
)  # 2 masks per chunk; all 20 in one (as on a GPU)
def test_fast_postprocessing_equals_the_official_order_of_work(monkeypatch, chunk_pixels):
    monkeypatch.setattr(postprocessing, "CHUNK_PIXELS", chunk_pixels)
    torch.manual_seed(0)
    cls_logits, mask_logits = torch.randn(20, 8), torch.randn(20, 12, 16) * 4
    args = (cls_logits, mask_logits, (96, 128), (90, 121), (180, 242), 50)
    fast, ref = instance_inference(*args), instance_inference_reference(*args)
    assert torch.equal(fast.pred_classes, ref.pred_classes)
    torch.testing.assert_close(fast.scores, ref.scores, rtol=0, atol=0)
    assert torch.equal(fast.pred_masks, ref.pred_masks)


def test_local_maximum_score_against_a_loop():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 5, 6) * 3  # K = 3
    score = local_maximum_score(logits).view(5, 6)
    probs = logits.softmax(1)[0]
    best = probs[:3].argmax(0)
    for y in range(5):
        for x in range(6):
            c, p = best[y, x], probs[best[y, x], y, x]
            peak = p >= 1e-6
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < 5 and 0 <= nx < 6 and best[ny, nx] == c:
                        peak &= p >= probs[c, ny, nx]
            assert score[y, x].item() == pytest.approx(p.item() + float(peak), abs=1e-7)


def test_attention_masks():
    logits = torch.tensor([[[[1.0, -1.0]], [[-1.0, -2.0]]]])  # (B=1, Q=2, 1, 2)
    mask = attention_mask_from_logits(logits, num_aux=1, num_heads=2)
    assert mask.shape == (2, 3, 2)
    assert mask[0].tolist() == [
        [False, True],
        [False, False],
        [False, False],
    ]  # all-blocked row -> open
    assert torch.equal(mask[0], mask[1])

    gt = torch.zeros(2, 16, 16, dtype=torch.bool)
    gt[0, :8, :8] = True
    targets = [{"labels": torch.tensor([0, 1]), "masks": gt}]
    indices = [(torch.tensor([1, 2]), torch.tensor([0, 1]))]
    mask = gt_attention_mask(targets, indices, num_queries=3, num_aux=1, size=(2, 2), num_heads=1)
    assert mask.shape == (1, 4, 4)
    assert mask[0, 1].tolist() == [False, True, True, True]  # query 1 may look only at pixel (0, 0)
    assert mask[0, 2].tolist() == [False] * 4  # empty GT at stride 8 -> attend everywhere
    assert not mask[0, 0].any() and not mask[0, 3].any()  # unmatched and aux queries
