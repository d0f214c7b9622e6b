"""The training loops of the classifier and the segmenter; a run writes a new model version.

What a run is asked to do is :mod:`triage.lifecycle.train_config`; its losses are
:mod:`triage.lifecycle.losses`; the temperature, OOD statistics and mask post-processing it fits
at the end are :mod:`triage.lifecycle.fitting`.

A run lives in ``run_dir`` (config.json, train.log, progress.jsonl, checkpoint.pt for resume,
a CANCEL file stops it) and ends by writing ``weights/<task>/<version>/``. Nothing here
downloads weights: every network starts from random initialisation or from a local version.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from triage import __version__, atomic
from triage.augment import augment_batch, jpeg_degrade
from triage.clock import utc_now
from triage.datasets import CachedSet
from triage.errors import TrainingError
from triage.lifecycle.fitting import (
    SELECTION_MIN_AREA,
    fit_ood_stats,
    fit_temperature_sets,
    mahalanobis_score,
    pooled_features,
    predict_logits,
    predict_masks,
    resize_masks,
    search_postprocess,
    seg_scores,
    seg_selection_score,
    softmax,
)
from triage.lifecycle.losses import partial_label_loss, seg_loss
from triage.lifecycle.sources import training_sources
from triage.lifecycle.train_config import GRADCAM_LAYERS, MEAN, SEG_LOSS_NAMES, STD, TrainConfig, preprocess_description
from triage.metrics import classification_report
from triage.models import build_model, load_model, save_model
from triage.records import CLASSES

log = logging.getLogger(__name__)


def sequence_probabilities(cfg: TrainConfig, tumor: np.ndarray) -> torch.Tensor:
    """Per-image probability of the cross-sequence remap for a batch (``tumor``: bool per image)."""
    none_p = cfg.sequence_aug if cfg.sequence_aug_no_tumor is None else cfg.sequence_aug_no_tumor
    return torch.from_numpy(np.where(tumor, cfg.sequence_aug, none_p).astype(np.float32))


class RunLog:
    """progress.jsonl writer + cancellation check, shared by both trainers."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.start = time.time()
        self._fh = (self.run_dir / "progress.jsonl").open("a", encoding="utf-8")

    def event(self, **data: object) -> None:
        data.setdefault("t", round(time.time() - self.start, 2))
        self._fh.write(json.dumps(data, default=float) + "\n")
        self._fh.flush()

    def cancelled(self) -> bool:
        return (self.run_dir / "CANCEL").exists()

    def close(self) -> None:
        self._fh.close()


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


def _cosine_lr(step: int, warmup: int, base: float, progress: float) -> float:
    """Warm-up then cosine decay over ``progress`` in [0, 1]."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _budget(cfg: TrainConfig) -> float:
    return cfg.time_budget_min if cfg.schedule_by_time else float("inf")


def _progress(step: int, total_steps: int, t0: float, budget_min: float) -> float:
    """Fraction of the run done: by steps or by the wall-time budget, whichever is further.

    Scheduling on time too means a slower (busier) machine still anneals the learning rate
    to zero inside the budget instead of being cut off mid-schedule.
    """
    return max(step / max(1, total_steps), (time.time() - t0) / (60.0 * budget_min))


def _batches(
    n: int, bs: int, rng: np.random.Generator, weights: np.ndarray | None = None, epoch_images: int | None = None
) -> list[np.ndarray]:
    if weights is None:
        order = rng.permutation(n)
    else:
        order = rng.choice(n, size=epoch_images or n, replace=True, p=weights / weights.sum())
    return [order[i : i + bs] for i in range(0, len(order), bs)]


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).unsqueeze(1)


def _environment() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triage": __version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


def _save_checkpoint(
    path: Path,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    epoch: int,
    best: dict,
    history: list,
    gen: torch.Generator,
    rng_state: dict,
) -> None:
    with atomic.atomic_path(path) as tmp:
        torch.save(
            {
                "net": net.state_dict(),
                "opt": opt.state_dict(),
                "epoch": epoch,
                "best": best,
                "history": history,
                "gen": gen.get_state(),
                "np_rng": rng_state,
            },
            tmp,
        )


def _resume(
    ckpt: Path, net: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, rng: np.random.Generator
) -> tuple[int, dict, list]:
    """Restore a run from its checkpoint; returns (next epoch, best so far, history)."""
    state = torch.load(ckpt, weights_only=False)  # our own file in our own run folder
    net.load_state_dict(state["net"])
    opt.load_state_dict(state["opt"])
    gen.set_state(state["gen"])
    rng.bit_generator.state = state["np_rng"]
    log.info("resumed from epoch %d", state["epoch"] + 1)
    return state["epoch"] + 1, state["best"], state["history"]


def _keep_best(score: float, best: dict, epoch_record: dict, net: nn.Module, best_path: Path) -> tuple[dict, bool]:
    """Save the weights when ``score`` beats ``best``; returns (best, improved)."""
    if score <= best["score"]:
        return best, False
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(best_path))
    return {"score": score, **epoch_record}, True


def _init_net(cfg: TrainConfig, meta: dict, weights_dir: Path | None) -> nn.Module:
    net = build_model(meta)
    if cfg.pretrained and not cfg.init_from:
        from triage.pretrained import init_pretrained

        left = init_pretrained(net, cfg.pretrained, cfg.arch)
        log.info("ImageNet start %s loaded; %d keys left as initialised (head/decoder)", cfg.pretrained, len(left))
    if cfg.init_from:
        if weights_dir is None:
            raise TrainingError("init_from needs the weights folder")
        base = load_model(weights_dir, cfg.task, cfg.init_from)
        if base.card.arch != cfg.arch:
            raise TrainingError(f"cannot fine-tune {base.card.arch} weights into {cfg.arch}")
        net.load_state_dict(base.net.state_dict())
    return net


def _fit(
    cfg: TrainConfig,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    rng: np.random.Generator,
    n_train: int,
    runlog: RunLog,
    step_loss,
    evaluate,
    desc: str,
    progress: bool,
    batch_weights: np.ndarray | None = None,
) -> tuple[list[dict], dict]:
    """The epoch loop both trainers share; ends with the best weights loaded into ``net``.

    Resumes from ``checkpoint.pt``; per batch: cosine LR (by steps or wall time), ``step_loss(idx)``,
    optimiser step, progress bar, run-log events and the cancel check; per epoch: ``evaluate()`` ->
    (selection score, record), best weights, checkpoint, early stopping. Returns (history, best).
    """
    run_dir = runlog.run_dir
    if batch_weights is not None and cfg.epoch_images:
        n_train = cfg.epoch_images
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    ckpt, best_path = run_dir / "checkpoint.pt", run_dir / "best.safetensors"
    start_epoch, best, history = 0, {"score": -1.0, "epoch": -1}, []
    if ckpt.exists():
        start_epoch, best, history = _resume(ckpt, net, opt, gen, rng)
    t0 = time.time() - sum(h.get("epoch_s", 0) for h in history)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, desc=desc, unit="batch")
    stale = sum(1 for h in history if h["epoch"] > best["epoch"])
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        te = time.time()
        losses = []
        for bi, idx in enumerate(
            _batches(
                len(batch_weights) if batch_weights is not None else n_train,
                cfg.batch_size,
                rng,
                batch_weights,
                cfg.epoch_images,
            )
        ):
            step = epoch * steps_per_epoch + bi
            for g in opt.param_groups:
                g["lr"] = _cosine_lr(step, steps_per_epoch // 2, cfg.lr, _progress(step, total_steps, t0, _budget(cfg)))
            loss = step_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if bi % 10 == 0:
                runlog.event(
                    kind="step", epoch=epoch, step=step, total_steps=total_steps, loss=float(np.mean(losses[-10:]))
                )
            if runlog.cancelled():
                runlog.event(kind="cancelled")
                raise TrainingError("training cancelled")
        score, record = evaluate()
        h = {"epoch": epoch, "train_loss": float(np.mean(losses)), **record, "epoch_s": time.time() - te}
        history.append(h)
        elapsed = time.time() - t0
        runlog.event(
            kind="epoch",
            total_epochs=cfg.epochs,
            elapsed_s=elapsed,
            eta_s=elapsed / (epoch + 1) * (cfg.epochs - epoch - 1),
            **h,
        )
        log.info("epoch %d %s", epoch, json.dumps(h))
        best, improved = _keep_best(score, best, h, net, best_path)
        stale = 0 if improved else stale + 1
        _save_checkpoint(ckpt, net, opt, epoch, best, history, gen, rng.bit_generator.state)
        done = _progress((epoch + 1) * steps_per_epoch, total_steps, t0, _budget(cfg))
        # No early stop in the first half: validation scores swing while the LR is high
        # (the first v2 segmenter run stopped at epoch 9 on a noisy false-positive rate).
        if stale >= cfg.patience and done >= 0.5:
            log.info("early stop at epoch %d", epoch)
            break
        if done >= 0.999:
            log.info("schedule finished after epoch %d", epoch)
            break
    if bar is not None:
        bar.close()
    from safetensors.torch import load_file

    net.load_state_dict(load_file(str(best_path)))
    return history, best


def source_scores(probs: np.ndarray, allowed: np.ndarray, sources: list[str]) -> dict[str, dict]:
    """Per validation source: accuracy (the top class is allowed) and tumour-miss rate."""
    no = CLASSES.index("no_tumor")
    pred = probs.argmax(1)
    correct = allowed[np.arange(len(pred)), pred]
    tumor = ~allowed[:, no]
    src = np.asarray(sources)
    out = {}
    for name in sorted(set(sources)):
        sel = src == name
        n_t = int((tumor & sel).sum())
        out[name] = {
            "n": int(sel.sum()),
            "accuracy": float(correct[sel].mean()),
            "tumor_miss": float(((pred == no) & tumor & sel).sum() / n_t) if n_t else 0.0,
        }
    return out


def train_classifier(
    cfg: TrainConfig,
    train: CachedSet,
    val: CachedSet,
    run_dir: Path,
    out_dir: Path,
    data_info: dict,
    weights_dir: Path | None = None,
    progress: bool = True,
    sample_weights: np.ndarray | None = None,
    val_sources: list[str] | None = None,
) -> Path:
    """Train, early-stop, calibrate (temperature) and fit OOD statistics; save a model version.

    ``sample_weights``: per-image sampling weights (per-source balance; None: uniform, class-weighted
    loss). ``val_sources``: the source of each validation image; model selection then averages
    accuracy minus tumour-miss over the sources, so no one source dominates it. Labels may be
    ``tumor`` (any tumour class, :func:`partial_label_loss`).
    """
    from triage.lifecycle.sources import label_matrix

    torch.set_num_threads(cfg.threads)
    gen = _seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    runlog = RunLog(run_dir)
    (Path(run_dir) / "config.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
    allowed_train = label_matrix(train.labels())
    allowed_val = label_matrix(val.labels())
    single = allowed_train.sum(1) == 1
    y_train = np.where(single, allowed_train.argmax(1), -1)
    val_single = allowed_val.sum(1) == 1
    y_val = allowed_val.argmax(1)
    no = CLASSES.index("no_tumor")
    is_tumor = ~allowed_train[:, no]
    if len(set(y_train[single].tolist())) < 2:
        raise TrainingError("the classifier needs at least two classes in the training data")
    val_sources = list(val_sources) if val_sources is not None else ["validation"] * len(val.samples)
    meta = {"task": "classifier", "arch": cfg.arch, "arch_kwargs": cfg.arch_kwargs}
    net = _init_net(cfg, meta, weights_dir)
    net = net.to(memory_format=torch.channels_last)
    counts = np.bincount(y_train[single], minlength=len(CLASSES)).astype(np.float64)
    class_w = torch.tensor(counts.sum() / (len(CLASSES) * np.maximum(counts, 1)), dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    allowed_t = torch.from_numpy(allowed_train)

    def step_loss(idx: np.ndarray) -> torch.Tensor:
        images = jpeg_degrade(train.images[idx], rng, cfg.jpeg_aug)
        x, _ = augment_batch(
            _to_tensor(images),
            None,
            cfg.input_size,
            gen,
            True,
            cfg.aug_strength,
            sequence_probabilities(cfg, is_tumor[idx]),
            cfg.enhancement_aug,
            cfg.skull_strip_aug,
        )
        logits = net(_normalize(x).contiguous(memory_format=torch.channels_last))
        if sample_weights is not None:  # balance comes from the sampler
            return partial_label_loss(logits, allowed_t[idx], cfg.label_smoothing)
        return F.cross_entropy(
            logits, torch.from_numpy(y_train[idx]), weight=class_w, label_smoothing=cfg.label_smoothing
        )

    def evaluate() -> tuple[float, dict]:
        val_logits = predict_logits(net, val.images, cfg.input_size)
        probs = softmax(val_logits)
        per_source = source_scores(probs, allowed_val, val_sources)
        rep = classification_report(y_val[val_single], probs[val_single])
        # Model selection favours not missing tumors: accuracy minus the tumor-miss rate, per source.
        score = float(np.mean([v["accuracy"] - v["tumor_miss"] for v in per_source.values()]))
        return score, {
            "val_accuracy": rep["accuracy"],
            "val_macro_f1": rep["macro_f1"],
            "val_tumor_miss": rep["tumor_miss_rate"],
            "val_loss": float(partial_label_loss(torch.from_numpy(val_logits), torch.from_numpy(allowed_val))),
            "val_sources": per_source,
        }

    history, best = _fit(
        cfg, net, opt, gen, rng, len(train.images), runlog, step_loss, evaluate, "classifier", progress, sample_weights
    )
    net = net.to(memory_format=torch.contiguous_format).eval()
    val_logits = predict_logits(net, val.images, cfg.input_size, tta=cfg.tta)
    temperature = fit_temperature_sets(val_logits, allowed_val)
    before = classification_report(y_val[val_single], softmax(val_logits)[val_single])
    after = classification_report(y_val[val_single], softmax(val_logits, temperature)[val_single])
    feats = pooled_features(net, train.images[single], cfg.input_size)
    means, precision = fit_ood_stats(feats, y_train[single])
    val_ood = mahalanobis_score(pooled_features(net, val.images, cfg.input_size), means, precision)
    ood_threshold = float(np.percentile(val_ood, 99.5))
    meta.update(
        {
            "version": Path(out_dir).name,
            "trained": True,
            "classes": list(CLASSES),
            "input_size": cfg.input_size,
            "in_chans": 1,
            "normalization": {"mean": MEAN, "std": STD, "scale": "x/255"},
            "preprocess": preprocess_description(cfg),
            "crop": cfg.crop,
            "intensity_norm": cfg.intensity_norm,
            "gradcam_layer": GRADCAM_LAYERS.get(cfg.arch, ""),
            "temperature": temperature,
            "tta": cfg.tta,
            "ood": {
                "method": "min class Mahalanobis distance on pre-logit features (Ledoit-Wolf)",
                "threshold": ood_threshold,
                "threshold_rule": "99.5th percentile of validation scores",
            },
            "created": utc_now("seconds"),
            "train_config": asdict(cfg),
            "history": history,
            "best_epoch": best["epoch"],
            "wall_time_min": round((time.time() - runlog.start) / 60, 2),
            "environment": _environment(),
            "data": data_info,
            "training_sources": training_sources(data_info),
            "metrics": {
                "validation": {
                    "before_calibration": before,
                    "after_calibration": after,
                    "ece_before": before["ece"],
                    "ece_after": after["ece"],
                    "per_source": source_scores(softmax(val_logits, temperature), allowed_val, val_sources),
                }
            },
        }
    )
    extras = {"ood_means": torch.from_numpy(means), "ood_precision": torch.from_numpy(precision)}
    folder = save_model(Path(out_dir), net, meta, extras)
    runlog.event(kind="done", version=folder.name, val_accuracy=after["accuracy"], ece_after=after["ece"])
    runlog.close()
    return folder


def train_segmenter(
    cfg: TrainConfig,
    train: CachedSet,
    val: CachedSet,
    run_dir: Path,
    out_dir: Path,
    data_info: dict,
    weights_dir: Path | None = None,
    progress: bool = True,
    sample_weights: np.ndarray | None = None,
    val_sources: list[str] | None = None,
) -> Path:
    """Train the U-Net with Dice+cross-entropy, pick threshold/min-area on validation, save a version.

    ``sample_weights`` / ``val_sources`` as in :func:`train_classifier`: per-source balanced batches,
    and epochs selected on the mean over sources of Dice minus half the false-positive-mask rate.
    """
    if train.masks is None or not train.masks.any():
        raise TrainingError("the segmenter needs training images with tumor masks")
    torch.set_num_threads(cfg.threads)
    gen = _seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    runlog = RunLog(run_dir)
    (Path(run_dir) / "config.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
    meta = {"task": "segmenter", "arch": cfg.arch, "arch_kwargs": cfg.arch_kwargs}
    net = _init_net(cfg, meta, weights_dir)
    loss_fn = seg_loss(cfg.seg_dice)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    has_tumor = train.masks.reshape(len(train.masks), -1).any(1)
    weights = np.where(has_tumor, cfg.tumor_oversample, 1.0).astype(np.float64)
    if sample_weights is not None:
        weights = sample_weights * weights
    val_truth = resize_masks(val.masks, cfg.input_size) if val.masks is not None else None
    src = np.asarray(val_sources if val_sources is not None else ["validation"] * len(val.samples))

    def step_loss(idx: np.ndarray) -> torch.Tensor:
        images = jpeg_degrade(train.images[idx], rng, cfg.jpeg_aug)
        x, m = augment_batch(
            _to_tensor(images),
            _to_tensor(train.masks[idx]),
            cfg.input_size,
            gen,
            True,
            cfg.aug_strength,
            sequence_probabilities(cfg, has_tumor[idx]),
            cfg.enhancement_aug,
            cfg.skull_strip_aug,
        )
        return loss_fn(net(_normalize(x)), m)

    def evaluate() -> tuple[float, dict]:
        probs = predict_masks(net, val.images, cfg.input_size)
        raw = seg_scores(probs, val_truth, 0.5, 0.0)
        # Select on the masks as shipped (small specks removed): the raw false-positive rate
        # counts single-pixel specks and swings between epochs.
        post = seg_scores(probs, val_truth, 0.5, SELECTION_MIN_AREA)
        per_source = {
            name: seg_scores(probs[src == name], val_truth[src == name], 0.5, SELECTION_MIN_AREA)
            for name in sorted(set(src.tolist()))
        }
        score = float(np.mean([seg_selection_score(v) for v in per_source.values()]))
        return score, {
            "val_dice": raw["dice"],
            "val_iou": raw["iou"],
            "val_fp_rate": raw["fp_rate"],
            "val_dice_post": post["dice"],
            "val_fp_rate_post": post["fp_rate"],
            "val_sources": per_source,
        }

    use_weights = sample_weights is not None or cfg.tumor_oversample != 1.0
    history, best = _fit(
        cfg,
        net,
        opt,
        gen,
        rng,
        len(train.images),
        runlog,
        step_loss,
        evaluate,
        "segmenter",
        progress,
        weights if use_weights else None,
    )
    net.eval()
    probs = predict_masks(net, val.images, cfg.input_size, tta=cfg.tta)
    chosen, grid = search_postprocess(probs, val_truth)
    meta.update(
        {
            "version": Path(out_dir).name,
            "trained": True,
            "input_size": cfg.input_size,
            "in_chans": 1,
            "normalization": {"mean": MEAN, "std": STD, "scale": "x/255"},
            "preprocess": preprocess_description(cfg),
            "crop": cfg.crop,
            "intensity_norm": cfg.intensity_norm,
            "threshold": chosen["threshold"],
            "min_area_frac": chosen["min_area_frac"],
            "tta": cfg.tta,
            "loss": SEG_LOSS_NAMES[cfg.seg_dice],
            "created": utc_now("seconds"),
            "train_config": asdict(cfg),
            "history": history,
            "best_epoch": best["epoch"],
            "postprocess_search": grid,
            "wall_time_min": round((time.time() - runlog.start) / 60, 2),
            "environment": _environment(),
            "data": data_info,
            "training_sources": training_sources(data_info),
            "metrics": {"validation": chosen},
        }
    )
    folder = save_model(Path(out_dir), net, meta)
    runlog.event(kind="done", version=folder.name, val_dice=chosen["dice"], val_fp_rate=chosen["fp_rate"])
    runlog.close()
    return folder
