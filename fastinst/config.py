"""Config keys of FastInst.

`add_fastinst_config` declares every key that FastInst code reads, plus the few keys that the official YAML files
set without anything reading them (so that official configs merge unchanged). Nothing else.

`merge_config_file` and `merge_config_opts` merge a YAML file and KEY VALUE overrides as detectron2 does, but a
file or override the config cannot take raises `ConfigError` (a ValueError) with one line naming the file or
the key, where yacs raises a bare AssertionError / KeyError.
"""

import difflib
import os
import re
import sys
from collections.abc import Sequence

import yaml
from detectron2.config import CfgNode as CN


class ConfigError(ValueError):
    """A config file or a KEY VALUE override that the config cannot take; the message is one line."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().strip("'\"")
    return text.splitlines()[0] if text else type(error).__name__


def _all_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        keys.append(prefix + name)
        if isinstance(value, CN):
            keys.extend(_all_keys(value, prefix + name + "."))
    return keys


def _did_you_mean(cfg: CN, key: str) -> str:
    """ "; did you mean A or B?" with the known keys closest to `key` (case ignored), or ""."""
    keys = _all_keys(cfg)
    if key.upper() in keys:
        return f"; did you mean {key.upper()}?"
    close = difflib.get_close_matches(key.upper(), keys, n=3, cutoff=0.75)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _lookup(cfg: CN, key: str):
    """The value at dotted `key`; raises ConfigError naming the key (and the closest known keys) if it is absent."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CN) or part not in node:
            raise ConfigError(
                f"config override {key!r}: no such config key{_did_you_mean(cfg, key)}"
            )
        node = node[part]
    return node


def merge_config_opts(cfg: CN, opts: Sequence) -> None:
    """Merge KEY VALUE overrides (command-line words: values are parsed as Python literals, else kept as strings)
    into `cfg`, in place, like `CfgNode.merge_from_list`.

    Raises:
        ConfigError: an unknown key (with the closest known keys), a key without a value, or a value of the
            wrong type for its key (e.g. SOLVER.MAX_ITER abc); one line naming the key. Keys before the bad one
            are already merged.
    """
    words = [str(o) if isinstance(o, os.PathLike) else o for o in opts]
    for i in range(0, len(words), 2):
        key = words[i]
        try:
            current = _lookup(cfg, str(key))
        except ConfigError as e:
            before = words[i - 1] if i else None
            # KEY KEY2 VALUE2: KEY lacks its value, so KEY2 was read as its value and VALUE2 as a key
            if isinstance(before, str) and before in _all_keys(cfg):
                raise ConfigError(
                    f"config override {words[i - 2]!r} has no value ({before!r} was read as its value, "
                    f"so {key!r} as a key): overrides are KEY VALUE pairs"
                ) from None
            raise e from None
        if i + 1 == len(words):
            raise ConfigError(
                f"config override {key!r} has no value: overrides are KEY VALUE pairs "
                f"(e.g. {key} {current!r})"
            )
        value = words[i + 1]
        if (
            isinstance(current, float)
            and isinstance(value, str)
            and re.fullmatch(r"[+-]?\d+", value.strip())
        ):
            value = f"{value.strip()}.0"  # SOLVER.BASE_LR 1: yacs refuses an int for a float key
        try:
            cfg.merge_from_list([key, value])
        except (AssertionError, ValueError, KeyError, TypeError) as e:
            reason = _first_line(e)
            # yacs: the value parses to another type than the key's
            if reason.startswith("Type mismatch"):
                reason = f"{key} takes {type(current).__name__} values (now {current!r})"
            raise ConfigError(f"config override {key} {value!r}: {reason}") from None


def merge_config_file(cfg: CN, path: str | os.PathLike) -> None:
    """Merge a YAML config file (with its _BASE_ chain) into `cfg`, in place, like `CfgNode.merge_from_file`.

    Raises:
        FileNotFoundError: `path` is not a file.
        ConfigError: the file (or a _BASE_ it names) is not valid YAML or sets a key the config does not declare;
            one line naming the file.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file not found: {path}")
    try:
        cfg.merge_from_file(path)
    except FileNotFoundError as e:  # a _BASE_ file that is not there
        raise FileNotFoundError(f"{path}: its _BASE_ file {e.filename} is not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not a valid YAML file ({' '.join(str(e).split())})") from None
    except KeyError as e:
        reason = _first_line(e)
        unknown = re.fullmatch(r"Non-existent config key: (\S+)", reason)
        hint = _did_you_mean(cfg, unknown.group(1)) if unknown else ""
        raise ConfigError(f"{path}: {reason}{hint}") from None
    except (AssertionError, ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path}: {_first_line(e)}") from None


def add_fastinst_config(cfg: CN) -> None:
    """Add FastInst's keys (with the official defaults) to a detectron2 config, in place."""
    # ---- data (read by the dataset mappers and the trainer) ----
    cfg.INPUT.DATASET_MAPPER_NAME = "fastinst_instance"
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.CROP.RESIZE = CN()
    cfg.INPUT.CROP.RESIZE.ENABLED = False
    cfg.INPUT.CROP.RESIZE.MIN_SIZE = (800,)
    cfg.INPUT.CROP.RESIZE.MIN_SIZE_TRAIN_SAMPLING = "choice"
    # Pad training images to a multiple of this (-1: off; the model pads each batch to 32 anyway).
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # Large-scale-jitter mapper ("coco_instance_lsj").
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0
    # Not official (off = official): choose the input sizes that the config leaves at 0 from the training
    # json's image and object sizes (fastinst/engine/input_size.py; the custom-data recipe turns it on).
    cfg.INPUT.AUTO_SIZE = CN()
    cfg.INPUT.AUTO_SIZE.ENABLED = False
    cfg.INPUT.AUTO_SIZE.MIN_CELLS = 3.0  # stride-8 cells the median object should span at the input
    cfg.INPUT.AUTO_SIZE.MAX_CROP = 256  # largest training crop side (px): the cost of an iteration

    # ---- what the model's class indices mean (read by fastinst.predictor.dataset_metadata) ----
    # Filled by train_net.py from the training dataset, so OUTPUT_DIR/config.yaml describes the model in any
    # process: the class names in class-index order, and the dataset's category id of each class (COCO json
    # ids, e.g. 5, 7, 9). Empty: take them from the registered dataset DATASETS.TEST[0] / TRAIN[0].
    cfg.DATASETS.THING_CLASSES = []
    cfg.DATASETS.THING_DATASET_IDS = []

    # ---- solver (read by the trainer's optimizer builder) ----
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
    # Train for about this many minutes (0.0: off): MAX_ITER and the other iteration counts are scaled to the
    # seconds per iteration measured before training (fastinst/engine/time_budget.py).
    cfg.SOLVER.TIME_BUDGET_MINUTES = 0.0

    # ---- backbone keys that the official YAMLs set; detectron2's defaults lack them ----
    # STEM_TYPE and RES5_MULTI_GRID are set by the official base YAML but read by nothing (the official
    # code got them from DeepLab's config); they exist so that official files merge.
    cfg.MODEL.RESNETS.STEM_TYPE = "basic"
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 1, 1]

    # ---- head ----
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "PyramidPoolingModuleFPN"

    # ---- FastInst ----
    cfg.MODEL.FASTINST = CN()
    cfg.MODEL.FASTINST.TRANSFORMER_DECODER_NAME = "FastInstDecoder"
    # loss
    cfg.MODEL.FASTINST.DEEP_SUPERVISION = True
    cfg.MODEL.FASTINST.NO_OBJECT_WEIGHT = 0.1
    cfg.MODEL.FASTINST.CLASS_WEIGHT = 2.0
    cfg.MODEL.FASTINST.DICE_WEIGHT = 5.0
    cfg.MODEL.FASTINST.MASK_WEIGHT = 5.0
    cfg.MODEL.FASTINST.LOCATION_WEIGHT = 1000.0
    cfg.MODEL.FASTINST.PROPOSAL_WEIGHT = 20.0
    # Not in the official release (False = official): the proposal loss also labels every stride-16 cell that an
    # object covers by more than half with that object's class, instead of only the matched cell.
    cfg.MODEL.FASTINST.DENSE_PROPOSAL_TARGETS = False
    # Not a key of the official release, whose training always runs the GT-mask-guided branch (True = official):
    # False skips it (training only; no parameters change).
    cfg.MODEL.FASTINST.GT_MASK_GUIDED = True
    # decoder
    cfg.MODEL.FASTINST.NHEADS = 8
    # Set by the official YAMLs; the official decoder hard-codes dropout 0 and so does this one.
    cfg.MODEL.FASTINST.DROPOUT = 0.0
    cfg.MODEL.FASTINST.DIM_FEEDFORWARD = 1024
    cfg.MODEL.FASTINST.DEC_LAYERS = 10
    cfg.MODEL.FASTINST.PRE_NORM = False
    cfg.MODEL.FASTINST.HIDDEN_DIM = 256
    cfg.MODEL.FASTINST.NUM_OBJECT_QUERIES = 100
    cfg.MODEL.FASTINST.NUM_AUX_QUERIES = 8
    # Inputs too small for NUM_OBJECT_QUERIES stride-16 locations: "error" (official behaviour, now a clear
    # message) or "pad" (pad the batch up to the smallest size that fits; changes no number for larger inputs).
    cfg.MODEL.FASTINST.SMALL_INPUT = "error"
    # < 0: use the backbone's size_divisibility
    cfg.MODEL.FASTINST.SIZE_DIVISIBILITY = -1
    # point-sampled mask losses
    cfg.MODEL.FASTINST.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.FASTINST.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.FASTINST.IMPORTANCE_SAMPLE_RATIO = 0.75

    # inference
    cfg.MODEL.FASTINST.TEST = CN()
    cfg.MODEL.FASTINST.TEST.SEMANTIC_ON = False
    cfg.MODEL.FASTINST.TEST.INSTANCE_ON = True
    cfg.MODEL.FASTINST.TEST.PANOPTIC_ON = False
    # Not official (the official boxes are zeros): boxes around the mask probability > this; 0.5 = the tight box
    # of each predicted mask. Lower keeps the extent of thin parts that the stride-8 map blurs (docs/training.md).
    cfg.MODEL.FASTINST.TEST.BOX_THRESHOLD = 0.5
    # Not official: keep only the largest 8-connected component of each predicted mask (its score and box follow).
    # A query's mask can also fire on other objects of its class; on the photos preset that took a trained
    # model's box AP from 32.1 to 9.7 and its mask AP from 43.7 to 27.9 (docs/training.md, "Boxes").
    cfg.MODEL.FASTINST.TEST.LARGEST_COMPONENT = False
    # Set by the official YAMLs; used only by panoptic inference, which FastInst does not ship.
    cfg.MODEL.FASTINST.TEST.OBJECT_MASK_THRESHOLD = 0.8
    cfg.MODEL.FASTINST.TEST.OVERLAP_THRESHOLD = 0.8


def load_config(config_file: str | os.PathLike | None, opts: Sequence = ()) -> CN:
    """detectron2's default config with FastInst's keys, then the YAML file (if any), then the KEY VALUE overrides;
    not frozen. Raises FileNotFoundError / ConfigError as `merge_config_file` and `merge_config_opts` do."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_fastinst_config(cfg)
    if config_file:
        merge_config_file(cfg, config_file)
    merge_config_opts(cfg, opts)
    return cfg


def load_config_or_exit(config_file: str | os.PathLike | None, opts: Sequence = ()) -> CN:
    """`load_config` for command-line tools: a missing or bad config file or override prints one line
    ("error: ...") to stderr and exits with status 2."""
    try:
        return load_config(config_file, opts)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
