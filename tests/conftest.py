"""Shared test helpers: config building, the golden weight recipe, reference paths."""

import logging
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

import fastinst

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "reference"  # the official implementation's outputs (README.md there)
CONFIG_DIR = REPO / "configs" / "coco" / "instance-segmentation"
OFFICIAL_CONFIGS = [
    "fastinst_R50_ppm-fpn_x1_576",
    "fastinst_R50_ppm-fpn_x3_640",
    "fastinst_R101_ppm-fpn_x3_640",
    "fastinst_R50-vd-dcn_ppm-fpn_x1_576",
    "fastinst_R50-vd-dcn_ppm-fpn_x3_640",
]


def make_cfg(config: str | Path, opts: list | None = None):
    """A frozen config from a YAML path or an official config name, on the CPU."""
    path = Path(config)
    if not path.suffix:
        path = CONFIG_DIR / f"{config}.yaml"
    cfg = get_cfg()
    fastinst.add_fastinst_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"] + list(opts or []))
    cfg.freeze()
    return cfg


def recipe_value(key: str, shape: tuple[int, ...], current: torch.Tensor) -> torch.Tensor:
    """The golden weight recipe (reference/golden/README.md) for one state-dict entry."""
    if key.endswith("empty_weight"):
        return current
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    n = rng.standard_normal(shape)
    if key.endswith("running_var"):
        value = 1.0 + 0.5 * rng.random(shape)
    elif key.endswith("running_mean"):
        value = 0.1 * n
    elif key.endswith("bias"):
        value = 0.02 * n
    elif key.endswith("weight") and len(shape) == 1:
        value = 1.0 + 0.1 * n
    elif len(shape) >= 2 and key.endswith("weight"):
        value = n / np.sqrt(np.prod(shape[1:]))
    else:
        value = 0.5 * n
    return torch.as_tensor(np.asarray(value), dtype=torch.float32)


def relative_error(out: torch.Tensor, ref) -> float:
    """||out - ref|| / ||ref|| in float64 on the CPU; `ref` a tensor or an array."""
    out = out.detach().cpu().double()
    ref = torch.as_tensor(ref).detach().cpu().double()
    return float((out - ref).norm() / ref.norm())


def load_recipe_weights(model: torch.nn.Module) -> None:
    """Overwrite every state-dict entry of `model` with the golden recipe."""
    state = model.state_dict()
    new = {k: recipe_value(k, tuple(v.shape), v) for k, v in state.items()}
    model.load_state_dict(new, strict=True)


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    torch.manual_seed(0)
    yield


def _logger_states() -> dict[logging.Logger, tuple[list[logging.Handler], bool, int]]:
    named = [x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)]
    return {x: (list(x.handlers), x.propagate, x.level) for x in named}


@pytest.fixture(autouse=True)
def _isolated_logging():
    """Undo the logging set-up that an in-process entry point (train_net.cli, demo main, the quickstart) did.

    detectron2's `setup_logger` (cached per arguments) binds its handlers to the `sys.stdout` of the moment, which
    inside a test is pytest's capture stream; after the test that stream is closed, and every later record of that
    logger fails with "--- Logging error ---" on stderr (breaking tests that count stderr lines). So after each
    test: handlers added to named loggers and plain StreamHandlers added to the root logger are removed (not
    closed: detectron2 caches its log files), propagation and levels are restored, and the cache of
    `setup_logger` is cleared so the next in-process call sets up afresh.
    """
    from detectron2.utils.logger import setup_logger

    before = _logger_states()
    root_before = list(logging.getLogger().handlers)
    yield
    for logger in [
        x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)
    ]:
        handlers, propagate, level = before.get(logger, ([], True, logging.NOTSET))
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
        logger.propagate = propagate
        logger.setLevel(level)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler not in root_before:
            root.removeHandler(handler)
    setup_logger.cache_clear()


# A small FastInst (R18 body, 64 channels, 16 queries, 2 decoder layers, 5 classes) for fast CPU tests.
TINY_OPTS = [
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", 64,
    "MODEL.SEM_SEG_HEAD.MASK_DIM", 64,
    "MODEL.FASTINST.HIDDEN_DIM", 64,
    "MODEL.FASTINST.DIM_FEEDFORWARD", 128,
    "MODEL.FASTINST.NHEADS", 4,
    "MODEL.FASTINST.NUM_OBJECT_QUERIES", 16,
    "MODEL.FASTINST.NUM_AUX_QUERIES", 4,
    "MODEL.FASTINST.DEC_LAYERS", 2,
    "MODEL.FASTINST.TRAIN_NUM_POINTS", 256,
]  # fmt: skip


def tiny_cfg(opts: list | None = None):
    return make_cfg(OFFICIAL_CONFIGS[1], TINY_OPTS + list(opts or []))


def tiny_model(opts: list | None = None, train: bool = False):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(tiny_cfg(opts))
    return model.train(train)


def random_instances(h: int, w: int, classes: list[int], seed: int = 0):
    """Instances with rectangular bool masks of the given classes at random places."""
    from detectron2.structures import Instances

    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(len(classes), h, w, dtype=torch.bool)
    for i in range(len(classes)):
        y0 = int(torch.randint(0, h // 2, (1,), generator=g))
        x0 = int(torch.randint(0, w // 2, (1,), generator=g))
        masks[i, y0 : y0 + h // 3, x0 : x0 + w // 3] = True
    inst = Instances((h, w))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    inst.gt_masks = masks
    return inst


def random_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
