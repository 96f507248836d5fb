"""fastinst.explain: the instance-activation map, the selected query locations, the query of each instance."""

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from fastinst.data.synthetic import render_image
from fastinst.explain import draw_explanation
from fastinst.modeling.decoder.query_proposal import local_maximum_score
from fastinst.modeling.postprocessing import resize_mask_logits
from fastinst.predictor import FastInstPredictor, build_predictor_cfg
from tests.conftest import REPO

TINY_YAML = REPO / "tests" / "fixtures" / "tiny.yaml"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(build_predictor_cfg(TINY_YAML))
    path = tmp_path_factory.mktemp("explain") / "tiny.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return FastInstPredictor(TINY_YAML, weights=checkpoint, score_threshold=0.0)


@pytest.fixture(scope="module")
def image():
    rgb, _ = render_image(np.random.default_rng(1), (100, 140))  # (119, 120, 3) RGB
    return rgb


def test_map_shape_and_mapping_back(predictor, image):
    """Stride-16 map of the padded input; mapped back to the image cell by cell, padding cropped."""
    e = predictor.explain(image, format="RGB")
    # 119 x 120 -> shortest edge 64: 64 x 65, padded to a multiple of 32: 64 x 96 -> 4 x 6 cells
    assert e.image_size == (64, 65)
    assert e.padded_size == (64, 96)
    assert e.stride == (16.0, 16.0)
    assert e.probs.shape == (6, 4, 6)  # K + 1 = 6
    np.testing.assert_allclose(e.probs.sum(0), 1.0, rtol=1e-5)
    assert e.activation.shape == (4, 6)
    np.testing.assert_array_equal(e.activation, e.probs[:-1].max(0))
    assert e.activation_image.shape == image.shape[:2]
    # a pixel of the original image shows the cell that covers it in the padded input
    scale_y, scale_x = 64 / 119, 65 / 120
    for y, x in [(0, 0), (50, 30), (118, 119), (70, 100)]:
        row, col = int(y * scale_y) // 16, int(x * scale_x) // 16
        assert e.activation_image[y, x] == e.activation[row, col]
    # cells wholly in the padding (columns 5, 6 cover padded x >= 80 > 65) do not appear
    shown = set(np.unique(e.activation_image).tolist())
    assert shown == set(np.unique(e.activation[:, :5]).tolist())


def test_locations_are_the_decoder_topq(predictor, image):
    """The marked locations are exactly the Q indices the decoder's query proposal selected."""
    decoder = predictor.model.sem_seg_head.predictor
    seen = {}

    def hook(module, args, output):
        seen["logits"], seen["topk"] = output[3].detach(), output[4].detach()

    handle = decoder.query_proposal.register_forward_hook(hook)
    try:
        e = predictor.explain(image, format="RGB")
    finally:
        handle.remove()
    q = decoder.num_queries
    np.testing.assert_array_equal(e.query_indices, seen["topk"][0].numpy())
    assert e.query_indices.shape == (q,) and len(set(e.query_indices.tolist())) == q
    # the top-Q of the proposal ranking score of that very map
    expected = torch.topk(local_maximum_score(seen["logits"]), q, dim=1)[1][0]
    np.testing.assert_array_equal(e.query_indices, expected.numpy())
    np.testing.assert_allclose(e.probs, seen["logits"][0].softmax(0).numpy(), rtol=1e-6)
    # cells and points: (row, col) and the cell centres scaled to the image
    w16 = e.activation.shape[1]
    np.testing.assert_array_equal(e.query_cells[:, 0] * w16 + e.query_cells[:, 1], e.query_indices)
    np.testing.assert_allclose(
        e.query_points[:, 0], (e.query_cells[:, 1] * 16 + 8) * 120 / 65, rtol=1e-5
    )
    np.testing.assert_allclose(
        e.query_points[:, 1], (e.query_cells[:, 0] * 16 + 8) * 119 / 64, rtol=1e-5
    )


def test_instances_and_their_queries(predictor, image):
    """Instances equal the predictor's; each one's mask is the mask of the query it is said to come from."""
    decoder = predictor.model.sem_seg_head.predictor
    seen = {}
    handle = decoder.register_forward_hook(
        lambda m, a, out: seen.update(masks=out["pred_masks"].detach(), cls=out["pred_logits"])
    )
    try:
        e = predictor.explain(image, format="RGB")
    finally:
        handle.remove()
    ref = predictor(image, format="RGB")
    assert len(e.instances) == len(ref) > 0
    assert torch.equal(e.instances.scores, ref.scores)
    assert torch.equal(e.instances.pred_masks, ref.pred_masks)
    assert e.instance_queries.shape == (len(ref),)
    probs = resize_mask_logits(seen["masks"][0], e.padded_size, e.image_size, image.shape[:2])
    classes = seen["cls"][0].softmax(-1)[:, :-1].argsort(dim=1, descending=True)
    for i, q in enumerate(e.instance_queries.tolist()):
        assert torch.equal(probs[q] > 0, ref.pred_masks[i])  # sigmoid > 0.5
        assert int(ref.pred_classes[i]) in classes[q].tolist()
    # with a threshold, the same instances as the predictor's and their queries
    predictor.score_threshold = float(ref.scores[3])
    try:
        kept = predictor.explain(image, format="RGB")
        assert torch.equal(kept.instances.scores, ref.scores[:4])
        np.testing.assert_array_equal(kept.instance_queries, e.instance_queries[:4])
    finally:
        predictor.score_threshold = 0.0

    picture = draw_explanation(image, e)
    assert picture.shape == image.shape and picture.dtype == np.uint8
    x, y = (round(v) for v in e.query_points[e.instance_queries[0]])
    assert tuple(picture[y, x]) == (
        255,
        255,
        255,
    )  # filled ring at the chosen query of a kept instance
    unfilled = draw_explanation(image, e, kept=[])  # no instance kept: rings only
    assert tuple(unfilled[y, x]) != (255, 255, 255)
    highlighted = draw_explanation(image, e, highlight=0)
    assert (highlighted == (255, 0, 255)).all(
        axis=2
    ).sum() > 20  # the instance's outline and query ring


def test_onnx_model_is_refused(predictor):
    class Graph:  # what an exported model looks like to the predictor: not an nn.Module
        pass

    model, predictor.model = predictor.model, Graph()
    try:
        with pytest.raises(ValueError, match="explain needs the PyTorch model"):
            predictor.explain(np.zeros((64, 64, 3), np.uint8))
    finally:
        predictor.model = model


def test_demo_explain_writes_the_picture(predictor, checkpoint, image, tmp_path):
    """demo/demo.py --explain: NAME_explain.png beside the drawing, the same picture as draw_explanation."""
    import runpy

    import cv2

    cv2.imwrite(str(tmp_path / "shapes.png"), image[:, :, ::-1])
    demo = runpy.run_path(str(REPO / "demo" / "demo.py"), run_name="demo")
    argv = ["--config-file", str(TINY_YAML), "--device", "cpu", "--confidence-threshold", "0"]
    argv += [
        "--input",
        str(tmp_path / "shapes.png"),
        "--output",
        str(tmp_path / "out"),
        "--explain",
    ]
    assert demo["main"]([*argv, "--opts", "MODEL.WEIGHTS", str(checkpoint)]) == 0
    written = cv2.imread(str(tmp_path / "out" / "shapes_explain.png"))[:, :, ::-1]
    expected = draw_explanation(image, predictor.explain(image, format="RGB"))
    np.testing.assert_array_equal(written, expected)
    assert (tmp_path / "out" / "shapes.png").is_file()
