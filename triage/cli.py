"""Command-line entry points, thin over :mod:`triage.service`, :mod:`triage.lifecycle.training_run` and
:mod:`triage.evaluate`. Run ``python -m triage --help``."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from dataclasses import replace
from pathlib import Path

from triage import __version__
from triage.batch import iter_inputs

log = logging.getLogger("triage")


def cmd_analyze(args: argparse.Namespace) -> int:
    from triage.batch import BatchJob, run_local

    files = list(iter_inputs(args.paths))
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing[:5])}", file=sys.stderr)
        return 2
    job = BatchJob(
        out=Path(args.out),
        masks_dir=Path(args.masks_dir) if args.masks_dir else None,
        explain=args.explain,
        batch_size=args.batch_size,
        resume=args.resume,
        parquet=args.parquet or Path(args.out).suffix == ".parquet",
        quiet=args.quiet,
    )
    if args.engine == "ray":
        from triage.batch_ray import run_ray  # Ray is imported only when asked for

        summary = run_ray(job, files, address=args.address, workers=args.workers)
    else:
        summary = run_local(job, files)
    print(summary.line())
    if args.studies_out:
        from triage.studies import write_study_csv

        if job.parquet:
            print("error: --studies-out needs a CSV --out", file=sys.stderr)
            return 2
        n = write_study_csv(job.out, Path(args.studies_out))
        print(f"{n} studies -> {args.studies_out}")
    return 1 if summary.missing else 0


def cmd_report(args: argparse.Namespace) -> int:
    from triage.config import get_settings
    from triage.report import find_study, study_pdf
    from triage.worklist import Worklist

    settings = get_settings(**({"data_dir": Path(args.data_dir)} if args.data_dir else {}))
    wl = Worklist(settings.db_path)
    study = find_study(wl, args.study)
    Path(args.out).write_bytes(study_pdf(wl, study, hide_names=settings.file_names_hidden))
    print(f"study {study.study_key[:12]} ({study.n_slices} slices, risk {study.risk:.2f}) -> {args.out}")
    return 0


def cmd_import_results(args: argparse.Namespace) -> int:
    from triage.batch import import_results
    from triage.config import get_settings

    settings = get_settings(**({"data_dir": Path(args.data_dir)} if args.data_dir else {}))
    summary = import_results([Path(r) for r in args.results], settings)
    for path, why in summary.skipped[:20]:
        print(f"not imported: {path}: {why}", file=sys.stderr)
    print(f"{summary.line()} -> {settings.db_path}")
    return 0


# TrainConfig fields the train command can set (argparse dest names match the field names).
TRAIN_OVERRIDES = (
    "epochs",
    "input_size",
    "threads",
    "time_budget_min",
    "seed",
    "lr",
    "seg_dice",
    "intensity_norm",
    "skull_strip_aug",
    "source_shares",
)
# Written out rather than imported so `--help` does not load torch; tests/test_cli.py checks they
# match train.SEG_LOSS_NAMES and preprocess.INTENSITY_NORM.
SEG_DICE_CHOICES = ("batch", "batch+image", "tversky")
INTENSITY_NORM_CHOICES = ("head_percentiles_v1",)


def _parse_shares(text: str) -> dict[str, float]:
    """``name=share,name=share`` -> dict; argparse reports a ValueError as a usage error."""
    shares = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected name=share, got {item!r}")
        shares[name.strip()] = float(value)
    return shares


def cmd_train(args: argparse.Namespace) -> int:
    from triage import lifecycle
    from triage.config import get_settings

    settings = get_settings()
    out = Path(args.out)
    weights_dir = Path(args.weights_dir) if args.weights_dir else settings.weights_dir
    # Without --run-dir / --cache-dir run_training takes the settings' folders (Settings.run_dir / cache_dir).
    run_dir = Path(args.run_dir) if args.run_dir else None
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    overrides = {k: getattr(args, k) for k in TRAIN_OVERRIDES if getattr(args, k) is not None}
    folder = lifecycle.run_training(
        args.task,
        Path(args.data),
        out,
        preset=args.preset,
        run_dir=run_dir,
        cache_dir=cache_dir,
        weights_dir=weights_dir,
        init_from=args.init_from,
        progress=not args.quiet,
        **overrides,
    )
    print(f"saved {folder}")
    if args.activate:
        # An explicit admin flag: logged as an override naming the flag, like any unproven change.
        lifecycle.promote(
            replace(settings, weights_dir=folder.parent.parent),
            args.task,
            folder.name,
            by=_system_user(),
            reason="activated at the end of training by `train --activate`",
        )
        print(f"{args.task} version {folder.name} is now active")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from triage.evaluate import run_evaluation

    if args.cross_source:
        from triage.cross_source import run_cross_source

        rep = run_cross_source(Path(args.data), Path(args.out), limit=args.limit, progress=not args.quiet)
        print(f"{len(rep['parts'])} parts -> {args.out}")
        return 0

    report = run_evaluation(
        Path(args.data), Path(args.out), folds=args.folds, limit=args.limit, progress=not args.quiet
    )
    print(report["summary_line"])
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from triage import lifecycle
    from triage.config import get_settings

    settings = get_settings()
    if args.task == "segmenter":
        entry = lifecycle.retune_segmenter(
            settings.weights_dir, args.version, Path(args.data), settings.cache_dir, tta=not args.no_tta
        )
        print(f"segmenter {args.version} (tta={entry['tta']}): {entry['old']} -> {entry['new']}")
        return 0
    entry = lifecycle.recalibrate_classifier(
        settings.weights_dir, args.version, Path(args.data), settings.cache_dir, tta=not args.no_tta
    )
    print(
        f"classifier {args.version}: temperature {entry['old_temperature']} -> {entry['temperature']:.3f}, "
        f"validation ECE {entry['ece_before']:.3f} -> {entry['ece_after']:.3f}, accuracy {entry['val_accuracy']:.3f}"
    )
    if args.flags:
        rule = lifecycle.fit_flags(settings.weights_dir, args.version, Path(args.data), settings.cache_dir)
        print(
            f"flag rule: {rule['rule']}; validation errors flagged {rule['errors_flagged']:.1%}, "
            f"correct calls flagged {rule['correct_flagged']:.1%}"
        )
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from triage.config import get_settings
    from triage.models import active_version, list_versions, read_card

    wd = get_settings().weights_dir
    for task in ("classifier", "segmenter"):
        try:
            active = active_version(wd, task)
        except Exception:
            active = ""
        for v in list_versions(wd, task):
            card = read_card(wd, task, v)
            mark = "*" if v == active else " "
            print(f"{mark} {task:10s} {v:20s} trained={card.trained} created={card.created}")
    return 0


def _system_user() -> str:
    """The account running the command, for the model-change log (never fails)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown system user"


def cmd_promote(args: argparse.Namespace) -> int:
    from triage import lifecycle
    from triage.config import get_settings

    settings = get_settings()
    comparison = None
    if args.compare:
        comparison = lifecycle.compare_run(settings, args.task, args.version, args.compare)
        verdict = lifecycle.judge(comparison)
        for c in verdict.checks:
            lo, hi = c.diff_ci95
            print(f"{c.metric:26s} active {c.active:.4f}  new {c.new:.4f}  difference 95% CI [{lo:+.4f}, {hi:+.4f}]")
        print(f"{comparison['n']} held-out images; " + ("; ".join(verdict.problems) or "grounds for promotion"))
    change = lifecycle.promote(
        settings, args.task, args.version, by=args.by, reason=args.reason or "", comparison=comparison
    )
    print(f"{args.task} version {args.version} is now active ({change.kind}, was {change.from_version})")
    if change.kind != "promotion":
        print(f"recorded with the reason given. Rule: {lifecycle.RULE_TEXT}")
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    from triage.accounts import AccountStore
    from triage.config import get_settings

    store = AccountStore(get_settings().data_dir)
    if args.action == "list":
        for name, role, active in store.accounts():
            print(f"{name:30s} {role:7s} {'active' if active else 'disabled'}")
        return 0
    if not args.name:
        raise SystemExit(f"users {args.action} needs a NAME")
    if args.action in ("add", "passwd"):
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("Password: ")
        if not args.password_stdin and getpass.getpass("Again: ") != password:
            raise SystemExit("the passwords differ; nothing changed")
        if args.action == "add":
            store.add(args.name, args.role, password)
            print(f"account {args.name} ({args.role}) created")
        else:
            store.set_password(args.name, password)
            print(f"password of {args.name} changed")
    else:
        store.set_active(args.name, args.action == "enable")
        print(f"account {args.name} {args.action}d")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from triage.config import get_settings
    from triage.models import active_version, load_model
    from triage.onnx_export import export_onnx

    wd = get_settings().weights_dir
    tasks = [args.task] if args.task else ["classifier", "segmenter"]
    failed = 0
    for task in tasks:
        model = load_model(wd, task, args.version or active_version(wd, task))
        record = export_onnx(model.net, model.meta, model.path)
        worst = max((record.get("max_difference") or {0: float("nan")}).values())
        state = "ok" if record["ok"] else f"NOT USED: {record.get('reason')}"
        print(f"{task} {model.version}: {state} (largest difference to torch {worst:.2e})")
        failed += not record["ok"]
    return 1 if failed else 0


def cmd_backup(args: argparse.Namespace) -> int:
    from triage.backup import backup
    from triage.config import get_settings

    b = backup(get_settings(), Path(args.dest))
    print(
        f"backup {b.folder}: {b.cases} cases, {b.files} stored files ({b.files_copied} copied, "
        f"{b.bytes_copied / 1e6:.1f} MB), integrity {b.integrity}"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from triage.backup import restore
    from triage.config import get_settings

    r = restore(get_settings(), Path(args.folder))
    print(f"restored {r.folder}: {r.cases} cases, {r.files_copied} files copied back, integrity {r.integrity}")
    return 0


def _pacs_context(args: argparse.Namespace):
    """Settings, service, worklist, PACS queue and sender for the listen / poll commands."""
    from triage.config import get_settings
    from triage.pacs import PacsQueue, pacs_db_path
    from triage.pacs_net import parse_sender
    from triage.service import TriageService
    from triage.worklist import Worklist

    settings = get_settings(**({"data_dir": Path(args.data_dir)} if args.data_dir else {}))
    sender = parse_sender(args.send, args.ae_title)
    return settings, TriageService(settings), Worklist(settings.db_path), PacsQueue(pacs_db_path(settings)), sender


def _stop_on_sigterm():
    """An event set by SIGTERM (systemctl stop): the loop finishes its pass and the command exits 0."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop


def _spool_in_data_dir(settings) -> None:
    """Make this process's temporary files (pynetdicom's streamed C-STORE datasets) land in
    ``<data dir>/pacs/spool``: on the data folder's disk, not a RAM-backed /tmp, and on the same file
    system as the incoming folder, so a received file is renamed into the queue, not copied. Files
    left there by a previous run that died mid-transfer are removed (the sender was not told
    "stored" and sends them again)."""
    import tempfile

    spool = Path(settings.data_dir) / "pacs" / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    for leftover in spool.iterdir():
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
    tempfile.tempdir = str(spool)


def cmd_listen(args: argparse.Namespace) -> int:
    from triage.pacs_net import Receiver, run_listener

    settings, service, worklist, queue, sender = _pacs_context(args)
    _spool_in_data_dir(settings)
    receiver = Receiver(queue, settings, args.ae_title, args.port, args.host, tuple(args.allow or ()))
    print(f"listening as {receiver.describe()}" + (f", results to {sender.describe()}" if sender else ""), flush=True)
    try:
        run_listener(receiver, service, worklist, sender, _stop_on_sigterm())
    except KeyboardInterrupt:
        pass
    return 0


def cmd_poll(args: argparse.Namespace) -> int:
    from triage.pacs_net import Poller, run_poller

    settings, service, worklist, queue, sender = _pacs_context(args)
    poller = Poller(queue, settings, args.url, None if args.all_modalities else "MR", args.lookback_days)
    print(
        f"polling {args.url} every {args.interval:g} s" + (f", results to {sender.describe()}" if sender else ""),
        flush=True,
    )
    try:
        run_poller(poller, service, worklist, args.interval, sender, _stop_on_sigterm(), once=args.once)
    except KeyboardInterrupt:
        pass
    s = queue.status()
    print(f"received/analysed/rejected/failed: {s.counts}; results {s.outbox}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m triage",
        description=(
            "Brain-MRI triage: classify (no tumor / glioma / meningioma / pituitary), segment, explain and rank "
            "MRI slices by malignancy risk. A triage aid, not a diagnosis."
        ),
    )
    p.add_argument("--version", action="version", version=f"triage {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="analyse files or folders and write one CSV row per scan")
    a.add_argument(
        "paths",
        nargs="+",
        help="image/DICOM/NIfTI files or folders (searched recursively; a NIfTI gives a row per slice)",
    )
    a.add_argument("--out", required=True, help="CSV file to write")
    a.add_argument("--masks-dir", help="write predicted tumor masks (0/255 PNG at input resolution) here")
    a.add_argument("--explain", action="store_true", help="also compute Grad-CAM (slower)")
    a.add_argument("--batch-size", type=int, default=16, help="files analysed per model batch")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.add_argument("--engine", choices=["local", "ray"], default="local", help="ray: batch run on a Ray cluster")
    a.add_argument("--address", help="with --engine ray: an existing cluster (default: start a local one)")
    a.add_argument("--workers", type=int, help="with --engine ray: actors holding the models (default: cluster CPUs)")
    a.add_argument("--resume", action="store_true", help="keep the rows of a partial --out, analyse only the rest")
    a.add_argument("--parquet", action="store_true", help="write --out as a folder of Parquet parts (also: .parquet)")
    a.add_argument(
        "--studies-out", help="also write one CSV row per study (risk, key slice, tumour volume in mL when known)"
    )
    a.set_defaults(func=cmd_analyze)

    rp = sub.add_parser("report", help="write the PDF report of one study of the worklist")
    rp.add_argument("study", help="the study key, or the scan id of any of its slices (the case id pages show)")
    rp.add_argument("--out", required=True, help="PDF file to write")
    rp.add_argument("--data-dir", help="the app's data folder (default: TRIAGE_DATA_DIR or ~/.local/share/...)")
    rp.set_defaults(func=cmd_report)

    ir = sub.add_parser("import-results", help="put the rows of batch `analyze` results into the worklist")
    ir.add_argument("results", nargs="+", help="results CSV files (or Parquet folders) written by analyze")
    ir.add_argument("--data-dir", help="the app's data folder (default: TRIAGE_DATA_DIR or ~/.local/share/...)")
    ir.set_defaults(func=cmd_import_results)

    t = sub.add_parser("train", help="train a classifier or segmenter into a new weights version")
    t.add_argument("task", choices=["classifier", "segmenter"])
    t.add_argument("--data", required=True, help="../shared/data (standard recipe) or one dataset folder")
    t.add_argument("--out", required=True, help="new version folder, e.g. weights/classifier/v2")
    t.add_argument(
        "--preset",
        choices=["quick", "full", "multi"],
        default="full",
        help="multi: every shared source, ImageNet-initialised EfficientNet-Lite0 (issue 23)",
    )
    t.add_argument("--run-dir", help="log/checkpoint folder; rerun with the same folder to resume")
    t.add_argument("--cache-dir", help="where decoded crops are cached")
    t.add_argument("--weights-dir", help="weights folder (for --init-from)")
    t.add_argument("--init-from", help="fine-tune from this existing version of the same task")
    t.add_argument("--epochs", type=int)
    t.add_argument(
        "--input-size",
        type=int,
        dest="input_size",
        help="model input in pixels (a fine-tune keeps its parent's unless this is given)",
    )
    t.add_argument("--threads", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--time-budget-min", type=float, dest="time_budget_min")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument(
        "--seg-dice",
        dest="seg_dice",
        choices=SEG_DICE_CHOICES,
        help="segmenter loss (default: batch; see lifecycle.losses.seg_loss)",
    )
    t.add_argument(
        "--intensity-norm",
        dest="intensity_norm",
        choices=INTENSITY_NORM_CHOICES,
        help="standardise each crop's head intensities (a fine-tune inherits its parent's setting)",
    )
    t.add_argument(
        "--skull-strip-aug",
        type=float,
        dest="skull_strip_aug",
        help="share of training crops whose skull is stripped (guards the 'no skull -> tumour' shortcut)",
    )
    t.add_argument(
        "--source-shares",
        type=_parse_shares,
        dest="source_shares",
        help="multi preset: batch share per source, e.g. sartaj=0.15,feltrin_44c_tumours=0.22 (others keep defaults)",
    )
    t.add_argument("--activate", action="store_true", help="make the new version active when done")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate the active models on a dataset and write a report")
    e.add_argument("--data", required=True, help="a dataset folder with manifest.csv (e.g. ../shared/data/brisc2025)")
    e.add_argument("--out", required=True, help="report path (.md; a .json is written beside it)")
    e.add_argument("--folds", type=int, default=0, help="k-fold cross-validation with the quick preset")
    e.add_argument("--limit", type=int, help="evaluate a fixed subset of N images (per part with --cross-source)")
    e.add_argument(
        "--cross-source",
        action="store_true",
        help="--data is ../shared/data: every held-out part of every source in one table (issue 23)",
    )
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser(
        "calibrate", help="re-fit a classifier's temperature (or a segmenter's threshold) on its validation split"
    )
    c.add_argument("version")
    c.add_argument("--task", choices=["classifier", "segmenter"], default="classifier")
    c.add_argument("--data", required=True, help="the shared data folder the version was trained on")
    c.add_argument("--no-tta", action="store_true", help="calibrate without mirror test-time augmentation")
    c.add_argument(
        "--flags", action="store_true", help="also fit the review-flag rule (uncertain band) on the validation images"
    )
    c.set_defaults(func=cmd_calibrate)

    v = sub.add_parser("versions", help="list model versions (* = active)")
    v.set_defaults(func=cmd_versions)
    pr = sub.add_parser(
        "promote", help="make a model version active (also rollback); logged, and held to the promotion rule"
    )
    pr.add_argument("task", choices=["classifier", "segmenter"])
    pr.add_argument("version")
    pr.add_argument("--compare", metavar="DATASET", help="compare with the active version first on held-out images")
    pr.add_argument("--reason", help="written reason, required when no comparison is grounds for the change")
    pr.add_argument("--by", default=_system_user(), help="who makes the change (default: the system user)")
    pr.set_defaults(func=cmd_promote)
    x = sub.add_parser(
        "export-onnx", help="write and check a version's ONNX export (the fast analysis path); default: active ones"
    )
    x.add_argument("--task", choices=["classifier", "segmenter"])
    x.add_argument("--version", help="version to export (default: the active one)")
    x.set_defaults(func=cmd_export_onnx)
    u = sub.add_parser("users", help="local accounts: add, passwd, disable, enable, list (sign-in for the app)")
    u.add_argument("action", choices=["add", "passwd", "disable", "enable", "list"])
    u.add_argument("name", nargs="?")
    u.add_argument("--role", choices=["reader", "admin"], default="reader")
    u.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    u.set_defaults(func=cmd_users)
    b = sub.add_parser("backup", help="consistent copy of the worklist and stored uploads (safe while the app runs)")
    b.add_argument("dest", help="folder that receives backup-<time>/ (outside the data folder)")
    b.set_defaults(func=cmd_backup)
    r = sub.add_parser("restore", help="bring a backup folder back (the current worklist is kept beside it)")
    r.add_argument("folder", help="a backup-<time> folder written by `backup`")
    r.set_defaults(func=cmd_restore)

    for name, helptext in (
        ("listen", "DICOM C-STORE receiver: analyse what the PACS or a scanner sends (runs until stopped)"),
        ("poll", "poll a DICOMweb PACS (QIDO-RS / WADO-RS) and analyse new MR instances (runs until stopped)"),
    ):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--ae-title", default="TRIAGE", help="this workstation's AE title (default TRIAGE)")
        q.add_argument("--send", help="store SEG/SC/SR results: dicom://AE@host:port (C-STORE) or a DICOMweb URL")
        q.add_argument("--data-dir", help="the app's data folder (default: TRIAGE_DATA_DIR or ~/.local/share/...)")
        if name == "listen":
            q.add_argument("--port", type=int, default=11112, help="TCP port to listen on (default 11112)")
            q.add_argument(
                "--host",
                default="127.0.0.1",
                help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)",
            )
            q.add_argument("--allow", nargs="+", metavar="AE", help="calling AE titles allowed (default: any)")
            q.set_defaults(func=cmd_listen)
        else:
            q.add_argument("--url", required=True, help="DICOMweb root, e.g. http://pacs:8042/dicom-web")
            q.add_argument("--interval", type=float, default=30.0, help="seconds between polls (default 30)")
            q.add_argument("--lookback-days", type=int, help="only list studies dated from the last poll minus N days")
            q.add_argument("--all-modalities", action="store_true", help="fetch every study, not only MR ones")
            q.add_argument("--once", action="store_true", help="one poll and one analysis pass, then exit")
            q.set_defaults(func=cmd_poll)
    return p


def main(argv: list[str] | None = None) -> int:
    from triage.errors import TriageError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except TriageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
