"""State-dict compatibility with the official checkpoints (keys, shapes, order) and checkpoint loading."""

import json

import pytest
import torch
from detectron2.modeling import build_model

from fastinst.checkpoint import CheckpointMismatchError, load_checkpoint
from tests.conftest import OFFICIAL_CONFIGS, REFERENCE, load_recipe_weights, make_cfg

EXPECTED_PARAMS = {
    "fastinst_R50_ppm-fpn_x1_576": 29_658_035,
    "fastinst_R50_ppm-fpn_x3_640": 34_176_597,
    "fastinst_R101_ppm-fpn_x3_640": 53_116_501,
    "fastinst_R50-vd-dcn_ppm-fpn_x1_576": 30_174_965,
    "fastinst_R50-vd-dcn_ppm-fpn_x3_640": 34_693_527,
}


def manifest(name: str) -> list[tuple[str, list[int]]]:
    data = json.loads((REFERENCE / "state_dict" / f"{name}.json").read_text())
    assert data["num_keys"] == len(data["keys"])
    return [(k, shape) for k, shape, _ in data["keys"]]


@pytest.fixture(scope="module", params=OFFICIAL_CONFIGS)
def official_model(request):
    torch.manual_seed(0)
    return request.param, build_model(make_cfg(request.param))


def test_keys_and_shapes_equal_the_official_manifest(official_model):
    name, model = official_model
    expected = manifest(name)
    state = model.state_dict()
    assert list(state) == [k for k, _ in expected]
    assert {k: list(v.shape) for k, v in state.items()} == dict(expected)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]


def test_official_checkpoint_loads_with_no_missing_or_unexpected_keys(official_model, tmp_path):
    name, model = official_model
    source = build_model(make_cfg(name))
    load_recipe_weights(source)
    path = tmp_path / "official.pth"
    # exactly the manifest's keys, as an official release file holds them
    torch.save({"model": {k: source.state_dict()[k] for k, _ in manifest(name)}}, path)

    load_checkpoint(model, str(path), strict=True)  # raises on any missing/unexpected key
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_checkpoint_with_a_single_empty_weight_key_loads(tmp_path):
    name = OFFICIAL_CONFIGS[0]
    model = build_model(make_cfg(name))
    state = dict(model.state_dict())
    del state["sem_seg_head.predictor.criterion.empty_weight"]
    torch.save({"model": state}, tmp_path / "one_key.pth")
    load_checkpoint(model, str(tmp_path / "one_key.pth"), strict=True)


def test_checkpoint_that_does_not_fit_names_the_problem(tmp_path):
    model = build_model(make_cfg(OFFICIAL_CONFIGS[0]))
    d3 = build_model(make_cfg(OFFICIAL_CONFIGS[1], ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 10]))
    path = tmp_path / "d3_10classes.pth"
    torch.save({"model": d3.state_dict()}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(model, str(path), strict=True)
    message = str(err.value)
    assert str(path) in message
    assert "not in the model: sem_seg_head.predictor." in message  # the layers D1 lacks
    assert "shape differs" in message and "(file (11,), model (81,))" in message  # NUM_CLASSES


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    model = build_model(make_cfg(OFFICIAL_CONFIGS[0]))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(model, str(tmp_path / "nope.pth"))
