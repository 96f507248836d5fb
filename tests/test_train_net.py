"""train_net.py end to end on CPU with the tiny-test config and tiny synthetic data.

Runs that must be separate processes (multi-process launch, exit codes, printed AP tables) use subprocesses;
the others call `train_net.main` in this process to save interpreter start-up time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastinst.data import generate_synthetic_dataset, register_synthetic

REPO = Path(__file__).resolve().parents[1]
TINY = "configs/synthetic/tiny-test.yaml"


def _load_train_net():
    """train_net.py is a script at the repository root, not a package module: load it from its path."""
    spec = importlib.util.spec_from_file_location("train_net", REPO / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_net = _load_train_net()


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory) -> Path:
    """A DETECTRON2_DATASETS folder whose `synthetic/` holds 8 train / 4 val images of 64-96 px."""
    root = tmp_path_factory.mktemp("d2datasets")
    generate_synthetic_dataset(root / "synthetic", num_train=8, num_val=4, image_size=(64, 96))
    return root


@pytest.fixture
def tiny_synthetic(datasets_root):
    register_synthetic(datasets_root / "synthetic")
    yield datasets_root / "synthetic"
    register_synthetic()


def run_train_net(
    args: list[str], datasets_root: Path, timeout: float = 240
) -> subprocess.CompletedProcess:
    env = {**os.environ, "DETECTRON2_DATASETS": str(datasets_root), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "train_net.py", "--config-file", TINY, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_main(args: list[str]):
    """`train_net.main` in this process (what `launch` runs in each worker)."""
    parsed = train_net.get_parser().parse_args(["--config-file", str(REPO / TINY), *args])
    return train_net.main(parsed)


def final_state(output_dir: Path) -> tuple[int, int]:
    """(iteration, optimizer step count) stored in output_dir/model_final.pth."""
    ckpt = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)
    steps = {int(s["step"]) for s in ckpt["trainer"]["_trainer"]["optimizer"]["state"].values()}
    assert len(steps) == 1, steps
    return ckpt["iteration"], steps.pop()


def assert_ap_tables(stdout: str) -> None:
    assert "Evaluation results for segm" in stdout, stdout[-3000:]
    assert "Evaluation results for bbox" in stdout
    assert "|  AP   |  AP50  |  AP75  |" in stdout


@pytest.fixture(scope="module")
def tiny_checkpoint(datasets_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_ckpt")
    register_synthetic(datasets_root / "synthetic")
    try:
        run_main(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()"])
    finally:
        register_synthetic()
    return out / "model_final.pth"


def test_resume_matches_uninterrupted_run(tiny_synthetic, tmp_path) -> None:
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    common = ["SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()"]
    run_main(["OUTPUT_DIR", str(interrupted), "SOLVER.MAX_ITER", "4", *common])
    assert final_state(interrupted) == (3, 4)
    run_main(["--resume", "OUTPUT_DIR", str(interrupted), "SOLVER.MAX_ITER", "6", *common])
    run_main(["OUTPUT_DIR", str(straight), "SOLVER.MAX_ITER", "6", *common])
    assert final_state(interrupted) == final_state(straight) == (5, 6)


def test_two_process_gloo_run(datasets_root, tmp_path) -> None:
    out = tmp_path / "ddp"
    proc = run_train_net(
        ["--num-gpus", "2", "--dist-url", "auto", "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2"],
        datasets_root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "World size: 2" in proc.stdout + proc.stderr
    assert (out / "model_final.pth").is_file()
    assert final_state(out) == (1, 2)
    assert_ap_tables(proc.stdout)


def test_eval_only_prints_ap_tables(datasets_root, tiny_checkpoint, tmp_path) -> None:
    proc = run_train_net(
        ["--eval-only", "MODEL.WEIGHTS", str(tiny_checkpoint), "OUTPUT_DIR", str(tmp_path)],
        datasets_root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_ap_tables(proc.stdout)
    assert (tmp_path / "inference" / "coco_instances_results.json").is_file()


def _custom_coco(synthetic: Path, dest: Path, split: str) -> tuple[Path, Path]:
    """A copy of a synthetic split as a 'user' dataset: 3 categories with ids 5, 7, 9."""
    with open(synthetic / "annotations" / f"instances_{split}.json") as f:
        coco = json.load(f)
    coco["categories"] = [
        {"id": i, "name": n} for i, n in ((5, "round"), (7, "angular"), (9, "other"))
    ]
    for ann in coco["annotations"]:
        ann["category_id"] = (5, 7, 9)[(ann["category_id"] - 1) % 3]
    image_dir = dest / f"{split}_images"
    shutil.copytree(synthetic / split, image_dir)
    json_file = dest / f"{split}.json"
    json_file.write_text(json.dumps(coco))
    return json_file, image_dir


def test_custom_coco_train_and_eval(datasets_root, tmp_path) -> None:
    train = _custom_coco(datasets_root / "synthetic", tmp_path, "train")
    val = _custom_coco(datasets_root / "synthetic", tmp_path, "val")
    out = tmp_path / "out"
    proc = run_train_net(
        ["--coco-train", *map(str, train), "--coco-val", *map(str, val)]
        + ["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2"],
        datasets_root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_ap_tables(proc.stdout)
    assert "| round" in proc.stdout  # per-category table uses the json's names
    config = (out / "config.yaml").read_text()
    assert "NUM_CLASSES: 3" in config
    assert "custom_coco_train" in config and "custom_coco_val" in config


def _break_missing_image(json_file: Path, image_dir: Path) -> str:
    victim = sorted(image_dir.iterdir())[0]
    victim.unlink()
    return victim.name


def _break_json_syntax(json_file: Path, image_dir: Path) -> str:
    json_file.write_text(json_file.read_text()[:-10])
    return "not valid JSON"


def _break_category_id(json_file: Path, image_dir: Path) -> str:
    coco = json.loads(json_file.read_text())
    coco["annotations"][0]["category_id"] = 99
    json_file.write_text(json.dumps(coco))
    return "99"


def _break_no_annotations(json_file: Path, image_dir: Path) -> str:
    coco = json.loads(json_file.read_text())
    coco["annotations"] = []
    json_file.write_text(json.dumps(coco))
    return "no usable images"


@pytest.mark.parametrize(
    "breaker",
    [_break_missing_image, _break_json_syntax, _break_category_id, _break_no_annotations],
    ids=["missing-image", "bad-json", "unknown-category", "no-annotations"],
)
def test_bad_input_fails_before_training(datasets_root, tmp_path, breaker) -> None:
    json_file, image_dir = _custom_coco(datasets_root / "synthetic", tmp_path, "train")
    detail = breaker(json_file, image_dir)
    out = tmp_path / "out"
    proc = run_train_net(
        ["--coco-train", str(json_file), str(image_dir), "OUTPUT_DIR", str(out)], datasets_root
    )
    assert proc.returncode != 0
    assert str(json_file) in proc.stderr and detail in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # nothing started


def test_missing_config_file_is_one_line(datasets_root, tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", str(tmp_path / "nope.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "nope.yaml" in proc.stderr and "Traceback" not in proc.stderr


def test_num_classes_mismatch_is_one_line(datasets_root, tmp_path) -> None:
    proc = run_train_net(
        ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5", "OUTPUT_DIR", str(tmp_path / "out")], datasets_root
    )
    assert proc.returncode != 0
    assert "synthetic_train" in proc.stderr and "NUM_CLASSES" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_builtin_dataset_without_files_is_one_line(tmp_path) -> None:
    """A detectron2 builtin dataset whose json is not under $DETECTRON2_DATASETS: named, before anything starts."""
    out = tmp_path / "out"
    proc = run_train_net(
        ["DATASETS.TRAIN", "('coco_2017_val',)", "DATASETS.TEST", "('coco_2017_val',)"]
        + ["OUTPUT_DIR", str(out)],
        tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    expected = str(tmp_path / "coco" / "annotations" / "instances_val2017.json")
    assert expected in proc.stderr and "DETECTRON2_DATASETS" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_registered_dataset_with_missing_image_is_one_line(datasets_root, tmp_path) -> None:
    """An image deleted after registration: the loader names it before the first iteration."""
    root = tmp_path / "datasets"
    shutil.copytree(datasets_root / "synthetic", root / "synthetic")
    victim = sorted((root / "synthetic" / "train").iterdir())[3]
    victim.unlink()
    out = tmp_path / "out"
    proc = run_train_net(["OUTPUT_DIR", str(out)], root)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert victim.name in proc.stderr and "synthetic_train" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "model_final.pth").exists()


def test_time_budget_trains_the_measured_number_of_iterations(datasets_root, tmp_path) -> None:
    out = tmp_path / "out"
    proc = run_train_net(
        ["SOLVER.TIME_BUDGET_MINUTES", "0.05", "DATASETS.TEST", "()", "OUTPUT_DIR", str(out)],
        datasets_root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("SOLVER.TIME_BUDGET_MINUTES"))
    max_iter = int(line.split("SOLVER.MAX_ITER ")[1].split()[0])
    assert max_iter >= 1
    assert f"MAX_ITER: {max_iter}\n" in (out / "config.yaml").read_text()
    assert final_state(out) == (max_iter - 1, max_iter)


# ---------------------------------------------------------------------------------------------------------------
# a trained model's life (issue 12): self-describing checkpoints, strict evaluation, safe resume, bad files


def error_lines(stderr: str) -> list[str]:
    """The "error: ..." lines of an in-process `train_net.cli` run (a logging handler that an earlier in-process
    run bound to its own, now closed, captured stream may add "Logging error" reports around them)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


ROUND_TRIP = """
import json, sys
from fastinst import FastInstPredictor
out, image, config = sys.argv[1:4]
opts = [] if config.endswith("config.yaml") else ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 3]
p = FastInstPredictor(config, weights=out + "/model_final.pth", score_threshold=0, opts=opts)
print(json.dumps({
    "names": list(p.metadata.thing_classes),
    "ids": {str(k): v for k, v in p.metadata.get("thing_dataset_id_to_contiguous_id").items()},
    "category_ids": sorted({r["category_id"] for r in p.to_coco_results(image)}),
}))
"""


def test_custom_model_keeps_its_names_and_ids_in_a_new_process(
    datasets_root, tiny_checkpoint, tmp_path
) -> None:
    """Fine-tune the 6-class tiny model (lenient: the class heads are skipped and listed) on a 3-category json
    with ids 5, 7, 9; then a new process gets round/angular/other and those ids, from config.yaml and, with
    another config, from the checkpoint's record."""
    train = _custom_coco(datasets_root / "synthetic", tmp_path, "train")
    out = tmp_path / "out"
    proc = run_train_net(
        ["--coco-train", *map(str, train), "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "1"]
        + ["MODEL.WEIGHTS", str(tiny_checkpoint)],
        datasets_root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr  # lenient: detectron2 lists the skipped keys
    assert "Skip loading parameter 'sem_seg_head.predictor.class_embed_layers.0" in log
    image = sorted(train[1].iterdir())[0]
    for config in (out / "config.yaml", REPO / TINY):
        got = subprocess.run(
            [sys.executable, "-c", ROUND_TRIP, str(out), str(image), str(config)],
            cwd=tmp_path,  # nothing registered, no dataset folder: only what the model carries
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert got.returncode == 0, got.stderr[-3000:]
        result = json.loads(got.stdout.strip().splitlines()[-1])
        assert result["names"] == ["round", "angular", "other"], config
        assert result["ids"] == {"5": 0, "7": 1, "9": 2}
        assert result["category_ids"] and set(result["category_ids"]) <= {5, 7, 9}
        assert "stand-ins" not in got.stderr


def test_eval_only_refuses_weights_that_do_not_fit(
    tiny_synthetic, tiny_checkpoint, tmp_path, capsys
):
    code = train_net.cli(
        ["--config-file", str(REPO / TINY), "--eval-only", "MODEL.WEIGHTS", str(tiny_checkpoint)]
        + ["MODEL.FASTINST.DEC_LAYERS", "2", "OUTPUT_DIR", str(tmp_path / "eval")]
    )
    captured = capsys.readouterr()
    assert code == 2
    err = error_lines(captured.err)
    assert len(err) == 1, err
    assert err[0].startswith(
        f"error: {tiny_checkpoint} does not fit the model built from the config"
    )
    assert "missing from the file: sem_seg_head.predictor." in err[0] and "_layers.1." in err[0]
    assert "Evaluation results" not in captured.out
    assert not (tmp_path / "eval").exists()  # refused before anything ran


def test_eval_only_refuses_a_model_of_other_classes(
    tiny_synthetic, tiny_checkpoint, tmp_path, capsys
):
    names = ["a", "b", "c", "d", "e", "f"]  # what config.yaml of another 6-class run would say
    code = train_net.cli(
        ["--config-file", str(REPO / TINY), "--eval-only", "MODEL.WEIGHTS", str(tiny_checkpoint)]
        + ["DATASETS.THING_CLASSES", str(names), "OUTPUT_DIR", str(tmp_path / "eval")]
    )
    captured = capsys.readouterr()
    err = error_lines(captured.err)
    assert code == 2 and err == [
        f"error: {tiny_checkpoint}: the model was trained for the classes {names}, but synthetic_val has "
        "['circle', 'square', 'triangle', 'star', 'ring', 'cross']; its AP would compare other classes."
    ]
    assert "Evaluation results" not in captured.out


def test_resume_without_checkpoint_says_so(tiny_synthetic, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "new_run"
    code = train_net.cli(
        ["--config-file", str(REPO / TINY), "--resume", "OUTPUT_DIR", str(out)]
        + ["MODEL.WEIGHTS", str(tiny_checkpoint), "SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()"]
    )
    assert code == 0
    warnings = [
        x for x in capsys.readouterr().err.splitlines() if x.startswith("warning: --resume")
    ]
    assert warnings == [
        f"warning: --resume: no checkpoint to resume in {out} (no last_checkpoint file): starting at "
        f"iteration 0 from MODEL.WEIGHTS {tiny_checkpoint}, which is an initialisation only (no "
        "iteration, optimizer or scheduler state)."
    ]
    assert final_state(out) == (0, 1)


@pytest.mark.parametrize(
    "change, detail",
    [
        (["MODEL.FASTINST.DEC_LAYERS", "2"], "does not fit the model built from the config"),
        (["DATASETS.TRAIN", "('synthetic_val',)"], "was trained with datasets ['synthetic_train']"),
    ],
    ids=["other-model", "other-dataset"],
)
def test_resume_of_another_run_is_refused_before_anything_runs(
    tiny_synthetic, tiny_checkpoint, tmp_path, capsys, change, detail
):
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint.parent, run)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    code = train_net.cli(
        ["--config-file", str(REPO / TINY), "--resume", "OUTPUT_DIR", str(run)]
        + ["SOLVER.MAX_ITER", "4", "DATASETS.TEST", "()", *change]
    )
    captured = capsys.readouterr()
    assert code == 2
    err = error_lines(captured.err)
    assert len(err) == 1 and err[0].startswith("error: --resume: ") and detail in err[0], err
    assert f"another run in OUTPUT_DIR {run}" in err[0]
    assert "Starting training" not in captured.out + captured.err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing written


@pytest.mark.parametrize("eval_only", [False, True], ids=["train", "eval-only"])
def test_truncated_weights_are_one_line(
    tiny_synthetic, tiny_checkpoint, tmp_path, capsys, eval_only
):
    truncated = tmp_path / "model_final.pth"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:5000])  # an interrupted download
    args = ["--config-file", str(REPO / TINY), *(["--eval-only"] if eval_only else [])]
    code = train_net.cli(
        [*args, "MODEL.WEIGHTS", str(truncated), "OUTPUT_DIR", str(tmp_path / "out")]
    )
    err = error_lines(capsys.readouterr().err)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(
        f"error: {truncated}: cannot be read as a PyTorch checkpoint (5000 bytes"
    ), err
    assert "probably incomplete" in err[0]
    assert not (tmp_path / "out").exists()


def test_custom_data_gets_its_own_output_dir(tmp_path) -> None:
    def output_dir(config: str, *opts: str) -> str:
        args = train_net.get_parser().parse_args(
            ["--config-file", config, "--coco-train", "t.json", "imgs", *opts]
        )
        cfg = train_net.load_config(config, args.opts)
        return train_net.custom_output_dir(args, cfg) or cfg.OUTPUT_DIR

    quickstart = str(REPO / "configs" / "synthetic" / "quickstart.yaml")
    assert output_dir(quickstart) == "output/custom"  # not the quickstart's output/quickstart
    assert output_dir(quickstart, "OUTPUT_DIR", "runs/mine") == "runs/mine"
    own = tmp_path / "mine.yaml"
    own.write_text(f"_BASE_: {quickstart}\nOUTPUT_DIR: runs/own\n")
    assert output_dir(str(own)) == "runs/own"  # a user's config keeps its OUTPUT_DIR
