"""Issue 18: time a 155-slice volume (BraTS-sized NIfTI, 240x240x155) through the app's series intake.

Builds the NIfTI from the shared BraTS FLAIR slices of one patient (the slices the shared set keeps sit at
their slice_index in an L-P-S volume, the rest are zero, like the empty slices of a skull-stripped volume;
a synthetic volume when the shared data is absent), then times ``process_uploads`` on it with the active
models: decode + reorientation, analysis with segmentation in model batches, storage of the slices, masks,
thumbnails and worklist rows. Target: <= 15 s on 2 cores.

    python bench/series_nifti.py [--patient brats2013_pat0001] [--repeats 2]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def shared_data() -> Path:
    env = os.environ.get("TRIAGE_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def brats_volume(patient: str) -> tuple[np.ndarray, str]:
    folder = shared_data() / "brats2015_hgg6"
    vol = np.zeros((240, 240, 155), np.float32)
    if not (folder / "manifest.csv").is_file():
        from tests.conftest import draw_synthetic_slice

        for k in range(20, 135):
            vol[:, :, k] = draw_synthetic_slice((240, 240), tumor=60 <= k < 90, seed=k)[0].T
        return vol, "synthetic"
    with (folder / "manifest.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["patient_id"] == patient and r["sequence"] == "flair"]
    for r in rows:
        img = cv2.imread(str(folder / r["path"]), cv2.IMREAD_GRAYSCALE)
        vol[:, :, int(r["slice_index"])] = img.T  # the shared slices are transposes of volume[:, :, k]
    return vol, f"{patient} flair ({len(rows)} shared slices, the rest empty)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patient", default="brats2013_pat0001")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    import nibabel as nib

    from triage.config import get_settings
    from triage.series import read_nifti
    from triage.service import TriageService
    from triage.ui.uploads import process_uploads
    from triage.worklist import Worklist

    vol, what = brats_volume(args.patient)
    data = gzip.compress(nib.Nifti1Image(vol, np.diag([-1.0, -1.0, 1.0, 1.0])).to_bytes(), mtime=0)
    print(f"volume: {what}; {vol.shape}, {len(data) / 1e6:.1f} MB gzipped; load average {os.getloadavg()}")
    service = TriageService(get_settings())
    service.warm_up()
    print(f"models: {service.models().versions} on {service.models().backends}")
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            settings = get_settings(data_dir=Path(tmp))
            svc = TriageService(settings)
            svc._bundle = service.models()  # the app keeps its models loaded; time the intake, not the load
            wl = Worklist(settings.db_path)
            t = time.perf_counter()
            series = read_nifti(data, "vol.nii.gz", settings)
            decode = time.perf_counter() - t
            t = time.perf_counter()
            rows = process_uploads([("vol.nii.gz", data)], svc, wl)
            total = time.perf_counter() - t
            ok = sum(r["status"] == "accepted" for r in rows)
            print(
                f"run {i + 1}: {len(series.slices)} slices, decode {decode:.2f} s, whole intake {total:.2f} s "
                f"({total / len(series.slices) * 1000:.1f} ms per slice); {ok} slices added, "
                f"{len(rows) - ok} refused (empty slices)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
