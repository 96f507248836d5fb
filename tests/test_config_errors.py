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
            ["solver.max_iter", "2"],  # case ignored for the suggestion
            "config override 'solver.max_iter': no such config key; did you mean SOLVER.MAX_ITER?",
        ),
        (
            ["SOLVER.BASE_LR", "fast"],
            "config override SOLVER.BASE_LR 'fast': SOLVER.BASE_LR takes float values (now 0.0001)",
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
    # an integer for a float key is that float (yacs alone refuses SOLVER.BASE_LR 1)
    merge_config_opts(cfg, ["SOLVER.BASE_LR", "1", "SOLVER.TIME_BUDGET_MINUTES", "-2"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.SOLVER.TIME_BUDGET_MINUTES == -2.0


def test_a_bad_config_file_is_one_line_naming_it(tmp_path):
    cfg = load_config(None)
    typo = tmp_path / "typo.yaml"
    typo.write_text("VERSION: 2\nMODEL:\n  WEIGHT: m.pth\n")
    with pytest.raises(ConfigError) as info:
        merge_config_file(cfg, typo)
    assert (
        str(info.value)
        == f"{typo}: Non-existent config key: MODEL.WEIGHT; did you mean MODEL.WEIGHTS?"
    )
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


def test_train_net_refuses_a_device_and_a_budget_it_cannot_use(tmp_path, capsys, monkeypatch):
    """One line, exit 2, before anything is built (was a traceback after the model build)."""
    train_net = runpy.run_path(str(REPO / "train_net.py"), run_name="train_net")
    base = ["--config-file", TINY_YAML, "--eval-only", "OUTPUT_DIR", str(tmp_path)]
    assert train_net["cli"]([*base, "MODEL.DEVICE", "cdua"]) == 2
    assert capsys.readouterr().err == (
        "error: MODEL.DEVICE 'cdua' is not a device torch knows (cpu, cuda, cuda:0, ...).\n"
    )
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert train_net["cli"]([*base, "MODEL.DEVICE", "cuda"]) == 2
    assert capsys.readouterr().err == (
        "error: MODEL.DEVICE 'cuda': no CUDA device is available here; add MODEL.DEVICE cpu to run on the "
        "CPU.\n"
    )
    train = [
        "--config-file",
        TINY_YAML,
        "OUTPUT_DIR",
        str(tmp_path),
        "SOLVER.TIME_BUDGET_MINUTES",
        "-1",
    ]
    assert train_net["cli"](train) == 2
    assert capsys.readouterr().err == (
        "error: SOLVER.TIME_BUDGET_MINUTES must be >= 0 (0: train the config's SOLVER.MAX_ITER), got -1.0\n"
    )
    assert list(tmp_path.iterdir()) == []  # nothing trained or written
