"""tools/analyze_model.py and tools/benchmark.py, run in-process on the tiny config (no timing assertions)."""

import re
import runpy

import pytest
from fvcore.nn import parameter_count

import fastinst.export.postprocess
from fastinst.inference import default_input_size, synthetic_inputs
from tests.conftest import CONFIG_DIR, OFFICIAL_CONFIGS, REPO, TINY_OPTS, make_cfg, tiny_model

TINY_CONFIG = str(CONFIG_DIR / f"{OFFICIAL_CONFIGS[1]}.yaml")
TINY_ARGS = [str(x) for x in TINY_OPTS]


def tool_module(name: str) -> dict:
    """The globals of tools/<name>.py (scripts, not a package)."""
    return runpy.run_path(str(REPO / "tools" / f"{name}.py"))


def tool(name: str):
    """The `main` function of tools/<name>.py."""
    return tool_module(name)["main"]


def test_default_input_size_follows_the_test_resize():
    assert default_input_size(make_cfg("fastinst_R50_ppm-fpn_x1_576")) == (576, 768)
    assert default_input_size(make_cfg("fastinst_R50_ppm-fpn_x3_640")) == (640, 853)
    (inp,) = synthetic_inputs((64, 96))
    assert inp["image"].shape == (3, 64, 96) and "height" not in inp


def test_analyze_parameters_equal_the_model_count(capsys):
    args = ["--tasks", "parameter", "--config-file", TINY_CONFIG, *TINY_ARGS]
    assert tool("analyze_model")(args) == 0
    out = capsys.readouterr().out
    expected = parameter_count(tiny_model())[""]
    assert f"Parameters: {expected:,}" in out
    assert "official" not in out.splitlines()[-1]  # the tiny model is no official config


def test_analyze_parameters_of_an_official_config(capsys):
    config = str(CONFIG_DIR / "fastinst_R50_ppm-fpn_x1_576.yaml")
    assert tool("analyze_model")(["--config-file", config, "--tasks", "parameter"]) == 0
    assert "Parameters: 29,658,035 (official 29,658,035: match)" in capsys.readouterr().out


def test_analyze_flops_and_activations_on_the_tiny_config(capsys):
    args = ["--tasks", "flop", "activation", "--config-file", TINY_CONFIG, "-n", "2"]
    assert tool("analyze_model")(args + ["--input-size", "64", "96", *TINY_ARGS]) == 0
    out = capsys.readouterr().out
    total = float(
        re.search(r"FLOPs total: ([\d.]+) ± ([\d.]+) G over 2 input\(s\) of 3x64x96", out)[1]
    )
    comparable = float(re.search(r"FLOPs official-comparable: ([\d.]+)", out)[1])
    assert 0 < comparable <= total  # the masked attention logits are the difference
    for op in ("conv", "linear", "bmm", "baddbmm", "einsum"):
        assert re.search(rf"^  {op} +[\d.]+$", out, re.M), op
    assert re.search(r"Activations total: [\d.]+ ± [\d.]+ M over 2 input\(s\)", out)


def test_masked_attention_flop_rule_counts_the_batched_product():
    rules = runpy.run_path(str(REPO / "tools" / "analyze_model.py"))

    class Value:  # a stand-in for a JIT value with a known shape
        def __init__(self, shape):
            self.shape = shape

        def isCompleteTensor(self):
            return True

        def type(self):
            return self

        def sizes(self):
            return self.shape

    rule = rules["MaskedAttentionFlops"]()
    bias, q, kt = Value([8, 10, 6]), Value([8, 10, 4]), Value([8, 4, 6])
    assert rule([bias, q, kt], []) == 8 * 10 * 4 * 6
    rule([bias, q, kt], [])
    assert rule.masked_qk == 2 * 8 * 10 * 4 * 6


def test_benchmark_prints_a_table_with_mask_rcnn_and_ratios(capsys):
    args = [
        "--config-file", TINY_CONFIG, "--input-size", "64", "96", "--runs", "2", "--warmup", "1",
        "--precision", "fp32", "bf16", "--official-path", *TINY_ARGS,
    ]  # fmt: skip
    assert tool("benchmark")(args) == 0
    out = capsys.readouterr().out
    assert "Input: 3x64x96, batch 1" in out and "random" in out
    # random weights give only empty masks: the post-processing times every mask's work instead of skipping it
    assert "Post-processing: every kept mask resized, empty or not (the worst case)" in out
    assert fastinst.export.postprocess.SKIP_EMPTY_MASKS  # the process-wide setting is given back
    rows = {
        line.split("|")[1].strip() + "/" + line.split("|")[2].strip(): line
        for line in out.splitlines()
        if line.startswith("| ")
    }
    assert {
        "FastInst official path/fp32",
        "FastInst/fp32",
        "FastInst/bf16",
        "Mask R-CNN R50-FPN/fp32",
    } <= set(rows)
    for line in rows.values():
        if line.startswith("| model"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[3]) > 0  # median ms
        assert re.fullmatch(r"\d+\.\d\dx", cells[7]) and re.fullmatch(r"\d+\.\d\dx", cells[8])
    assert rows["Mask R-CNN R50-FPN/fp32"].strip("| ").split("|")[-1].strip() == "1.00x"
    assert rows["FastInst official path/fp32"].split("|")[8].strip() == "1.00x"


def test_benchmark_op_times_paragraph():
    row = tool_module("benchmark")["Row"](
        "FastInst OpenVINO", "int8", False, None, times=[0.2, 0.1, 0.3]
    )
    text = tool_module("benchmark")["format_op_times"](
        row,
        {
            "Convolution jit_avx2_I8": 80.0,
            "FullyConnected jit_gemm_I8": 30.0,
            "MVN jit_avx2_f32": 1.0,
        },
        2,
    )
    assert text == (
        "FastInst OpenVINO int8: graph 111.0 ms (sum of op times, last run), whole pipeline 200.0 ms (median), "
        "outside the graph ~89.0 ms. Largest kinds of op (ms): Convolution jit_avx2_I8 80.0; "
        "FullyConnected jit_gemm_I8 30.0."
    )


@pytest.mark.parametrize("bad", [["--runs", "0"]])
def test_benchmark_rejects_bad_arguments(bad):
    with pytest.raises(SystemExit):
        tool("benchmark")(["--config-file", TINY_CONFIG, *bad, *TINY_ARGS])


def test_analyze_speed_and_structure(capsys):
    args = ["--tasks", "speed", "structure", "--runs", "1", "--input-size", "64", "96"]
    assert tool("analyze_model")(args + ["--config-file", TINY_CONFIG, *TINY_ARGS]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Speed: median [\d.]+ ms over 1 runs", out)
    assert "FastInstDecoder(" in out
