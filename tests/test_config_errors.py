"""A config file or KEY VALUE override the config cannot take: one line naming it (ConfigError), exit 2 in every
command-line tool, where yacs raised a bare AssertionError / KeyError with a traceback."""

from __future__ import annotations

import runpy

import pytest

from fastinst import FastInstPredictor
from fastinst.config import ConfigError, load_config, merge_config_file, merge_config_opts
from fastinst.engine import quickstart
from fastinst.export.cli import main as export_main
from tests.conftest import REPO

TINY_YAML = str(REPO / "configs" / "synthetic" / "tiny-test.yaml")


@pytest.mark.parametrize(
    "opts, message",
    [
        (
            ["MODEL.WEIGHT", "m.pth"],
            "config override 'MODEL.WEIGHT': no such config key; did you mean MODEL.WEIGHTS?",
        ),
        (
            ["SOLVER.MAX_ITR", "2"],
            "config override 'SOLVER.MAX_ITR': no such config key; did you mean SOLVER.MAX_ITER?",
        ),
        (["NOT.A.KEY", "1"], "config override 'NOT.A.KEY': no such config key"),
        (
            ["SOLVER.MAX_ITER", "2", "MODEL.WEIGHTS"],
            "config override 'MODEL.WEIGHTS' has no value: overrides are KEY VALUE pairs "
            "(e.g. MODEL.WEIGHTS '')",
        ),
        (
            ["MODEL.WEIGHTS", "SOLVER.MAX_ITER", "2"],
            "config override 'MODEL.WEIGHTS' has no value ('SOLVER.MAX_ITER' was read as its value, so "
            "'2' as a key): overrides are KEY VALUE pairs",
        ),
        (
            ["SOLVER.MAX_ITER", "abc"],
            "config override SOLVER.MAX_ITER 'abc': SOLVER.MAX_ITER takes int values (now 40000)",
        ),
        (
            ["SOLVER.BASE_LR", "1"],  # yacs does not turn an int into a float: 1.0 is needed
            "config override SOLVER.BASE_LR '1': SOLVER.BASE_LR takes float values (now 0.0001)",
        ),
    ],
)
def test_a_bad_override_is_one_line_naming_the_key(opts, message):
    cfg = load_config(None)
    cfg.SOLVER.BASE_LR = 0.0001
    with pytest.raises(ConfigError) as info:
        merge_config_opts(cfg, opts)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)  # callers that catch ValueError keep working


def test_good_overrides_merge_as_detectron2_merges_them(tmp_path):
    cfg = load_config(TINY_YAML, ["SOLVER.MAX_ITER", "7", "MODEL.WEIGHTS", tmp_path / "m.pth"])
    assert cfg.SOLVER.MAX_ITER == 7
    assert cfg.MODEL.WEIGHTS == str(tmp_path / "m.pth")  # os.PathLike values become strings
    merge_config_opts(
        cfg, ["DATASETS.TRAIN", "('a', 'b')", "MODEL.FASTINST.TEST.BOX_THRESHOLD", "0.3"]
    )
    assert cfg.DATASETS.TRAIN == ("a", "b") and cfg.MODEL.FASTINST.TEST.BOX_THRESHOLD == 0.3


def test_a_bad_config_file_is_one_line_naming_it(tmp_path):
    cfg = load_config(None)
    typo = tmp_path / "typo.yaml"
    typo.write_text("VERSION: 2\nMODEL:\n  WEIGHT: m.pth\n")
    with pytest.raises(
        ConfigError, match=r"^\S+typo\.yaml: Non-existent config key: MODEL\.WEIGHT$"
    ):
        merge_config_file(cfg, typo)
    broken = tmp_path / "broken.yaml"
    broken.write_text("MODEL: [\n")
    with pytest.raises(ConfigError) as info:
        merge_config_file(cfg, broken)
    assert str(info.value).startswith(f"{broken}: not a valid YAML file (while parsing a flow node")
    assert "\n" not in str(info.value)
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: missing-base.yaml\n")
    with pytest.raises(FileNotFoundError) as info:
        merge_config_file(cfg, child)
    assert (
        str(info.value) == f"{child}: its _BASE_ file {tmp_path / 'missing-base.yaml'} is not found"
    )
    with pytest.raises(FileNotFoundError, match="^Config file not found: .*nothere.yaml$"):
        merge_config_file(cfg, tmp_path / "nothere.yaml")


KEY_TYPO = (
    "error: config override 'MODEL.WEIGHT': no such config key; did you mean MODEL.WEIGHTS?\n"
)


def test_every_tool_refuses_a_bad_override_in_one_line(tmp_path, capsys):
    """Exit 2 and the one line, from each command-line entry point that takes overrides."""
    assert (
        export_main(
            ["--config-file", TINY_YAML, "--output", str(tmp_path / "m.onnx"), "MODEL.WEIGHT", "x"]
        )
        == 2
    )
    assert capsys.readouterr().err == KEY_TYPO

    train_net = runpy.run_path(str(REPO / "train_net.py"), run_name="train_net")
    argv = [
        "--config-file",
        TINY_YAML,
        "--eval-only",
        "OUTPUT_DIR",
        str(tmp_path),
        "MODEL.WEIGHT",
        "x",
    ]
    assert train_net["cli"](argv) == 2
    assert capsys.readouterr().err == KEY_TYPO

    with pytest.raises(SystemExit) as info:
        quickstart.main(["--config-file", TINY_YAML, "SOLVER.MAX_ITER", "abc"])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "error: config override SOLVER.MAX_ITER 'abc': SOLVER.MAX_ITER takes int values (now 4)\n"
    )

    benchmark = runpy.run_path(str(REPO / "tools" / "benchmark.py"))["main"]
    with pytest.raises(SystemExit) as info:
        benchmark(["--config-file", TINY_YAML, "--runs", "1", "MODEL.WEIGHT", "x"])
    assert info.value.code == 2
    assert capsys.readouterr().err == KEY_TYPO

    with pytest.raises(ConfigError, match="^config override 'MODEL.WEIGHT': no such config key"):
        FastInstPredictor(TINY_YAML, opts=["MODEL.WEIGHT", "x"])
