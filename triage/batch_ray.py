"""The Ray engine of ``python -m triage analyze --engine ray`` (issue 21): Ray Data batch inference.

The input paths become a dataset; read tasks load the files' bytes; an actor pool of
``workers`` actors, each holding one :class:`~triage.service.TriageService` (models loaded once
per actor, not per batch), turns batches of files into rows with :func:`triage.batch.analyze_inputs`,
the code the local engine runs; the driver writes the rows and masks with
:class:`triage.batch.ResultWriter` as they arrive. Only this module imports Ray, and only
``--engine ray`` imports this module.

CPU requests (issue item 6). A Ray CPU is an admission token, not a core: what an actor really
uses is its ONNX Runtime thread count. Each actor runs with ``inference_threads=1`` (one core)
and asks for ``ACTOR_NUM_CPUS = 0.5``; read tasks ask for ``READ_NUM_CPUS = 0.25``. So on a
2-CPU node two actors hold 1 of the 2 tokens and reads can always be scheduled; with the Ray
default of 1 CPU per actor, two actors take both tokens and the read tasks never start (the run
hangs). Reading is I/O, and small next to inference, so it fits in the cores' idle time.

Fault tolerance: the actor pool restarts a dead actor and retries the batch it held
(``max_restarts=-1``, ``max_task_retries=-1``); a retried batch's earlier output is discarded
by Ray, and the driver drops any row of a file that already has rows, so a killed worker neither
loses nor duplicates rows.

Models (issue item 5): the driver reads the active versions' files from its weights folder,
puts them in the object store once, and every actor writes them to a local folder keyed by their
hash; nothing is downloaded, and every actor of a run uses the same versions even if another
version is promoted during the run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from triage import atomic
from triage.batch import (
    RESULT_COLUMNS,
    BatchJob,
    FileInput,
    OutputRow,
    ResultWriter,
    RunSummary,
    analyze_inputs,
    count_rows,
    pending_files,
    read_input,
)
from triage.config import Settings, get_settings

log = logging.getLogger(__name__)

ACTOR_NUM_CPUS = 0.5
READ_NUM_CPUS = 0.25
ACTOR_THREADS = 1  # ONNX Runtime intra-op threads per actor: one actor per core
MASK_COLUMN = "_mask_png"


@dataclass(frozen=True)
class WeightsSnapshot:
    """The active model versions' files (path relative to the weights folder -> bytes) and their hash."""

    files: dict
    digest: str


def snapshot_weights(weights_dir: Path) -> WeightsSnapshot:
    """Read each task's ``ACTIVE`` pointer and the files of the version it names."""
    weights_dir = Path(weights_dir)
    files: dict[str, bytes] = {}
    for task in ("classifier", "segmenter"):
        active = (weights_dir / task / "ACTIVE").read_text(encoding="utf-8").strip()
        files[f"{task}/ACTIVE"] = f"{active}\n".encode()
        for f in sorted((weights_dir / task / active).iterdir()):
            if f.is_file():
                files[f"{task}/{active}/{f.name}"] = f.read_bytes()
    h = hashlib.sha256()
    for name, data in sorted(files.items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return WeightsSnapshot(files, h.hexdigest()[:16])


def materialise_weights(snapshot: WeightsSnapshot, root: Path | None = None) -> Path:
    """Write a snapshot to ``<tmp>/triage-weights-<digest>`` once per node (atomic rename), return it."""
    root = Path(root or tempfile.gettempdir())
    final = root / f"triage-weights-{snapshot.digest}"
    if final.is_dir():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=".triage-weights-", dir=root))
    for name, data in snapshot.files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    try:
        atomic.replace_dir(tmp, final)  # refused once ``final`` holds files
    except OSError:  # another actor on this node got there first: its copy is the same bytes
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _read_batch(batch: dict, settings: Settings) -> dict:
    """Read task: paths -> bytes (b"" and the reason when a file cannot be read)."""
    read = [read_input(p, settings) for p in batch["path"]]
    return {
        "path": np.array([r.path for r in read], dtype=object),
        "data": np.array([r.data or b"" for r in read], dtype=object),
        "error": np.array([r.error for r in read], dtype=object),
    }


class Analyzer:
    """The actor: one TriageService on the run's weights snapshot, one thread; batches of read
    files in, the CSV rows (as strings) and mask PNGs out."""

    def __init__(self, settings: Settings, weights, masks_dir: str | None, explain: bool):
        import ray

        from triage.service import TriageService

        snapshot = ray.get(weights[0])  # a list, so Ray does not resolve the reference for us
        settings = replace(settings, weights_dir=materialise_weights(snapshot), inference_threads=ACTOR_THREADS)
        self.service = TriageService(settings)
        self.service.models()  # once per actor
        self.masks_dir = Path(masks_dir) if masks_dir else None
        self.explain = explain

    def __call__(self, batch: dict) -> dict:
        inputs = [
            FileInput(str(p), data=bytes(d) if not e else None, error=str(e))
            for p, d, e in zip(batch["path"], batch["data"], batch["error"])
        ]
        rows = analyze_inputs(self.service, inputs, self.masks_dir, self.explain)
        out = {
            c: np.array(["" if r.values[c] is None else str(r.values[c]) for r in rows], dtype=object)
            for c in RESULT_COLUMNS
        }
        out[MASK_COLUMN] = np.array([r.mask or b"" for r in rows], dtype=object)
        return out


def _rows_of(batch: dict) -> list[OutputRow]:
    n = len(batch["path"])
    return [OutputRow({c: batch[c][i] for c in RESULT_COLUMNS}, bytes(batch[MASK_COLUMN][i]) or None) for i in range(n)]


# Ray binds its servers to every interface and turns 127.0.0.1 into the machine's address, unless
# this (its single-machine mode, the default on macOS and Windows) is off. It is read when Ray is
# imported, so it is set before the first import.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _loopback_only() -> None:
    os.environ[LOOPBACK_ENV] = "0"
    if "ray" in sys.modules:  # imported earlier in this process: the constant is already read
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def connect(address: str | None) -> bool:
    """Join the cluster at ``address``, or start a local one bound to 127.0.0.1 with this machine's
    CPUs and no dashboard. Returns True when this call started Ray (and so should shut it down).
    An already initialised Ray (a test's cluster, a notebook's) is used as it is."""
    if not address:
        _loopback_only()
    import ray

    if ray.is_initialized():
        return False
    if address:
        # The cluster's nodes get this package from the driver (its code only, not the weights,
        # which travel in the object store); they need the same requirements installed.
        ray.init(
            address=address,
            runtime_env={"py_modules": [str(Path(__file__).resolve().parent)]},
            logging_level=logging.WARNING,
        )
    else:
        ray.init(
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
        )
    return True


def run_ray(
    job: BatchJob, files: list[Path], address: str | None = None, workers: int | None = None, on_rows=None
) -> RunSummary:
    """Analyse ``files`` on a Ray cluster and write the same rows as :func:`triage.batch.run_local`.

    ``workers``: actors in the pool (default: the cluster's CPUs, one single-threaded actor per
    core). ``on_rows(n_written)``: called after each write (progress; the worker-kill test).
    Rows arrive in completion order, not input order.
    """
    if not address:
        _loopback_only()
    import ray
    import ray.data
    from tqdm import tqdm

    from triage.service import TriageService

    settings = get_settings()
    TriageService(settings).models()  # fail early, with the reason, before any cluster starts
    writer = ResultWriter(job.out, job.parquet, job.resume, job.masks_dir)
    summary = RunSummary(out=str(job.out))
    todo = pending_files(files, writer, summary)
    if not todo:
        writer.close()
        return summary
    started = connect(address)
    try:
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # our own bar counts files written
        # Ray Data logs each execution plan at INFO; the CLI's closing line says what happened.
        logging.getLogger("ray.data").setLevel(logging.ERROR if job.quiet else logging.WARNING)
        weights = [ray.put(snapshot_weights(settings.weights_dir))]
        ds = ray.data.from_items([{"path": str(f)} for f in todo])
        with warnings.catch_warnings():
            # max_restarts / max_task_retries are Ray Data 2.60's defaults for actor pools; they are
            # spelled out because a lost worker must never lose rows, whatever a later default is.
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(
                _read_batch, batch_size=job.batch_size, fn_kwargs={"settings": settings}, num_cpus=READ_NUM_CPUS
            ).map_batches(
                Analyzer,
                batch_size=job.batch_size,
                compute=ray.data.ActorPoolStrategy(size=workers),
                fn_constructor_kwargs={
                    "settings": settings,
                    "weights": weights,
                    "masks_dir": str(job.masks_dir) if job.masks_dir else None,
                    "explain": job.explain,
                },
                num_cpus=ACTOR_NUM_CPUS,
                max_restarts=-1,
                max_task_retries=-1,
            )
        bar = tqdm(total=len(todo), unit="file", desc=f"analyze (ray, {workers} workers)", disable=job.quiet)
        written: set[str] = set()
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                rows = []
                for row in _rows_of(batch):
                    if row.path in written:  # a file's rows arrive together: seen before = a repeat
                        summary.duplicates += 1
                        continue
                    rows.append(row)
                if rows:
                    writer.write(rows)
                    count_rows(rows, summary)
                    new = {r.path for r in rows} - written
                    written |= new
                    bar.update(len(new))
                    if on_rows is not None:
                        on_rows(len(written))
        finally:
            bar.close()
            writer.close()
        if summary.duplicates:
            log.warning("dropped %d repeated rows (a retried batch)", summary.duplicates)
        summary.missing = [str(f) for f in todo if str(f) not in written]
        return summary
    finally:
        if started:
            ray.shutdown()
