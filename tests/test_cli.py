"""`python -m triage` end to end on a folder mixing good and bad files."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import draw_synthetic_slice
from tests.model_fixtures import make_tiny_weights
from triage import __version__

# Slow tier: real models, training runs, subprocesses or full pages (`pytest -m 'not slow'` skips them).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def run_cli(args, env):
    return subprocess.run(
        [sys.executable, "-m", "triage", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_tiny_weights(root / "w")
    e = dict(
        os.environ, TRIAGE_WEIGHTS_DIR=str(root / "w"), TRIAGE_DATA_DIR=str(root / "data"), TRIAGE_TORCH_THREADS="1"
    )
    return e


def test_help_and_version(env):
    r = run_cli(["--help"], env)
    assert r.returncode == 0 and "analyze" in r.stdout
    r = run_cli(["--version"], env)
    assert r.returncode == 0 and __version__ in r.stdout


def test_analyze_folder_writes_one_row_per_file(tmp_path, env):
    inp = tmp_path / "in" / "sub"
    inp.mkdir(parents=True)
    img, _ = draw_synthetic_slice(shape=(240, 200))
    cv2.imwrite(str(inp / "good.png"), img)
    cv2.imwrite(str(inp.parent / "good2.jpg"), img)
    (inp / "empty.png").write_bytes(b"")
    (inp / "notes.png").write_text("hello")
    cv2.imwrite(str(inp / "noise.png"), np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8))
    out = tmp_path / "results.csv"
    r = run_cli(
        ["analyze", str(tmp_path / "in"), "--out", str(out), "--masks-dir", str(tmp_path / "masks"), "--quiet"], env
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5
    by_name = {Path(row["path"]).name: row for row in rows}
    for col in [
        "path",
        "status",
        "error",
        "label",
        "suspected_tumor",
        "p_no_tumor",
        "p_glioma",
        "p_meningioma",
        "p_pituitary",
        "risk",
        "ood",
        "tumor_area_px",
        "mask_path",
        "ms",
    ]:
        assert col in rows[0]
    assert by_name["good.png"]["status"] == "ok"
    assert by_name["empty.png"]["status"] == "rejected" and "empty" in by_name["empty.png"]["error"]
    assert by_name["notes.png"]["status"] == "rejected"
    assert by_name["noise.png"]["status"] == "rejected" and "noise" in by_name["noise.png"]["error"]
    for row in rows:
        if row["mask_path"]:
            m = cv2.imread(row["mask_path"], cv2.IMREAD_GRAYSCALE)
            assert m.shape == (240, 200) and set(np.unique(m)) <= {0, 255}


def test_misuse_exits_nonzero(tmp_path, env):
    r = run_cli(["analyze", str(tmp_path / "missing"), "--out", str(tmp_path / "o.csv")], env)
    assert r.returncode == 2
    r = run_cli(["analyze"], env)
    assert r.returncode == 2


def test_train_options_match_what_training_knows():
    from triage import cli
    from triage.lifecycle.train_config import SEG_LOSS_NAMES, TrainConfig
    from triage.preprocess import INTENSITY_NORM

    assert set(cli.SEG_DICE_CHOICES) == set(SEG_LOSS_NAMES)
    assert cli.INTENSITY_NORM_CHOICES == (INTENSITY_NORM,)
    assert set(cli.TRAIN_OVERRIDES) <= set(TrainConfig.__dataclass_fields__)
    args = cli.build_parser().parse_args(
        [
            "train",
            "segmenter",
            "--data",
            "d",
            "--out",
            "o",
            "--lr",
            "0.001",
            "--seg-dice",
            "batch+image",
            "--intensity-norm",
            INTENSITY_NORM,
            "--input-size",
            "224",
        ]
    )
    assert (args.lr, args.seg_dice, args.intensity_norm) == (0.001, "batch+image", INTENSITY_NORM)
    # A fine-tune at another size (segmenter v13: v12 at 224 px) reaches run_training as an override.
    assert args.input_size == 224 and "input_size" in cli.TRAIN_OVERRIDES
    shares = cli.build_parser().parse_args(
        ["train", "classifier", "--data", "d", "--out", "o", "--source-shares", "sartaj=0.16, feltrin_44c_tumours=0.2"]
    )
    assert shares.source_shares == {"sartaj": 0.16, "feltrin_44c_tumours": 0.2}
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "classifier", "--data", "d", "--out", "o", "--source-shares", "x"])


def test_analyze_csv_defuses_formulas_in_file_names(tmp_path, env):
    """Issue 22 item 13: `analyze --out` writes file names that look like formulas as text."""
    img, _ = draw_synthetic_slice(shape=(240, 200))
    names = ['=HYPERLINK("evil.example","open").png', "+1+2.png", "@SUM(1).png"]
    cv2.imwrite(str(tmp_path / names[0]), img)
    (tmp_path / names[1]).write_bytes(b"not an image\r=1+1")
    cv2.imwrite(str(tmp_path / names[2]), img[::-1].copy())
    out = tmp_path / "x.csv"
    r = subprocess.run(
        [sys.executable, "-m", "triage", "analyze", *names, "--out", str(out), "--quiet"],
        cwd=tmp_path,  # relative paths: the cell starts with the file name
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open(newline="")))
    assert [row["path"] for row in rows] == ["'" + n for n in names]
    assert [row["status"] for row in rows] == ["ok", "rejected", "ok"]
    assert all(not v.startswith(("=", "+", "-", "@")) for row in rows for v in row.values())
