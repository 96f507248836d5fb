"""The quickstart driver end to end with the tiny config: train, evaluate, draw, print the AP line."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from fastinst.engine import quickstart

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic" / "tiny-test.yaml"


def test_quickstart_prints_ap_and_draws(tiny_synthetic, tmp_path, capsys) -> None:
    out = tmp_path / "qs"
    argv = ["--config-file", str(TINY_CONFIG), "--data-root", str(tiny_synthetic), "--num-vis", "2"]
    quickstart.main([*argv, "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"quickstart mask AP: \d+\.\d", last), last
    pictures = sorted((out / "vis").glob("*.png"))
    assert len(pictures) == 2
    width, height = Image.open(pictures[0]).size
    assert width > height  # ground truth and prediction side by side
    assert (out / "model_final.pth").is_file()

    # --eval-only loads strictly: weights that do not fit the config are one line, exit 2, no AP
    try:
        quickstart.main(
            [*argv, "--eval-only", "OUTPUT_DIR", str(out), "MODEL.FASTINST.DEC_LAYERS", "2"]
        )
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("--eval-only evaluated weights that do not fit the config")
    captured = capsys.readouterr()
    errors = [x for x in captured.err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: {out / 'model_final.pth'} does not fit"
    )
    assert "quickstart mask AP" not in captured.out
