"""Training and calibration of the classifier and the segmenter; writes a new model version.

A run lives in ``run_dir`` (config.json, train.log, progress.jsonl, checkpoint.pt for resume,
a CANCEL file stops it) and ends by writing ``weights/<task>/<version>/``. Nothing here
downloads weights: every network starts from random initialisation or from a local version.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from triage import __version__
from triage.augment import augment_batch
from triage.datasets import CachedSet
from triage.errors import TrainingError
from triage.metrics import classification_report, dice_iou
from triage.models import build_model, load_model, save_model
from triage.preprocess import DEFAULT_CROP, check_intensity_norm
from triage.records import CLASSES
from triage.segment import probability_maps, remove_small_components

log = logging.getLogger(__name__)

# Presets: "full" trains a model from scratch in <= 90 min for both models on 2 cores (side by
# side, 1 thread each); "quick" (<= 10 min) is for the retraining page. The shipped versions are
# longer fine-tune lineages of the full preset (weights/README.md). Epoch caps are high enough that
# the time budget, not the cap, ends a run: caps of 16 / 14 stopped the classifier and segmenter
# after 50 / 35 min of a 65-80 min budget (measured on this CPU, 1 thread each).
PRESETS: dict[str, dict[str, dict]] = {
    "classifier": {
        # Augmentation as shipped since v4 (class-conditional T2/FLAIR remap + enhancement suppression).
        "full": dict(arch="timm:regnetx_004", input_size=160, epochs=30, batch_size=32, lr=3e-3,
                     time_budget_min=65.0, sequence_aug=0.5, sequence_aug_no_tumor=0.1, enhancement_aug=0.35),
        # Epoch and image caps high enough that the 8-min budget, not the cap, ends the run (the
        # v1 caps of 3 epochs x 1200 images stopped after 1.1-1.4 min: 5-fold CV 0.537).
        "quick": dict(arch="timm:regnetx_004", input_size=128, epochs=12, batch_size=32, lr=3e-3,
                      max_train_images=2400, time_budget_min=8.0),
    },
    "segmenter": {
        "full": dict(arch="monai:UNet", input_size=160, epochs=30, batch_size=16, lr=3e-3,
                     time_budget_min=65.0),
        "quick": dict(arch="monai:UNet", input_size=128, epochs=10, batch_size=16, lr=2e-3,
                      max_train_images=1600, time_budget_min=8.0),
    },
}

ARCH_KWARGS = {
    "timm:regnetx_004": {"num_classes": len(CLASSES), "in_chans": 1, "drop_rate": 0.2},
    "monai:UNet": {"in_channels": 1, "out_channels": 1, "channels": [16, 32, 64, 128, 256],
                   "strides": [2, 2, 2, 2], "num_res_units": 1},
}
GRADCAM_LAYERS = {"timm:regnetx_004": "s4"}
# Minimum component area (fraction of the input square) used when selecting the best segmenter epoch.
SELECTION_MIN_AREA = 0.002
MEAN, STD = 0.2, 0.25  # normalisation of [0, 1] grey crops (close to the BRISC crop statistics)


@dataclass
class TrainConfig:
    """Everything a run needs; saved as config.json beside the run and in the model metadata."""

    task: str
    preset: str = "full"
    arch: str = ""
    arch_kwargs: dict = field(default_factory=dict)
    input_size: int = 160
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.05
    patience: int = 5
    seed: int = 0
    threads: int = 2
    max_train_images: int | None = None
    time_budget_min: float = 60.0
    aug_strength: float = 1.0
    # Per-image probability of the cross-sequence remap in augment.sequence_remap (0 in v1).
    sequence_aug: float = 0.4
    # The same probability for no-tumor images (None: as sequence_aug). Lower than sequence_aug
    # because the no_tumor class already holds real T2/FLAIR/CT slices (Sartaj/BRISC READMEs)
    # while nearly every tumor slice is T1: a uniform remap leaves "looks like T2 -> no tumor"
    # as a shortcut, which is how v2 still missed T2 tumors on navoneel.
    sequence_aug_no_tumor: float | None = None
    # Per-image probability (any class) of augment.suppress_enhancement (0 before v4).
    enhancement_aug: float = 0.0
    # True: the LR schedule also follows wall time so the run always ends annealed inside
    # time_budget_min (not bit-reproducible on a busy machine). False: purely step-based.
    schedule_by_time: bool = True
    # Brain-crop settings used for training; recorded in the model card so inference matches.
    crop: dict = field(default_factory=lambda: dict(DEFAULT_CROP))
    # Test-time augmentation (mean of the slice and its mirror image) for the classifier;
    # the temperature is fitted on TTA logits so calibration matches inference.
    tta: bool = True
    init_from: str | None = None
    tumor_oversample: float = 1.0
    # Segmenter loss: "batch" (one Dice over the batch, v1-v4), "batch+image" (plus the mean of each
    # tumor slice's own Dice, as the evaluation averages it) or "tversky" (misses cost more); see _seg_loss.
    seg_dice: str = "batch"
    # None, or preprocess.INTENSITY_NORM: every crop's head percentiles are standardised before the
    # model sees it (training, calibration and inference alike; the card records it).
    intensity_norm: str | None = None
    notes: dict = field(default_factory=dict)

    @classmethod
    def from_preset(cls, task: str, preset: str = "full", **overrides: object) -> TrainConfig:
        if task not in PRESETS:
            raise ValueError(f"task must be classifier or segmenter, got {task!r}")
        if preset not in PRESETS[task]:
            raise ValueError(f"preset must be one of {sorted(PRESETS[task])}, got {preset!r}")
        values = dict(PRESETS[task][preset])
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(task=task, preset=preset, **values)
        if not cfg.arch_kwargs:
            cfg.arch_kwargs = dict(ARCH_KWARGS[cfg.arch])
        cfg.check()
        return cfg

    def check(self) -> None:
        """Raise ValueError for option names this code does not know, before any data is read."""
        if self.seg_dice not in SEG_LOSS_NAMES:
            raise ValueError(f"unknown seg_dice {self.seg_dice!r}; expected one of {sorted(SEG_LOSS_NAMES)}")
        check_intensity_norm(self.intensity_norm)


def preprocess_description(cfg: TrainConfig) -> str:
    """The card's one-line account of what happens to a scan before the model sees it."""
    steps = ["crop_brain (head mask, extreme points, margin)"]
    if cfg.intensity_norm:
        steps.append(f"standardize_intensity ({cfg.intensity_norm})")
    return " -> ".join(steps + ["zero-pad to square", "resize"])


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


def _batches(n: int, bs: int, rng: np.random.Generator, weights: np.ndarray | None = None) -> list[np.ndarray]:
    if weights is None:
        order = rng.permutation(n)
    else:
        order = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
    return [order[i:i + bs] for i in range(0, n, bs)]


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).unsqueeze(1)


@torch.no_grad()
def predict_logits(net: nn.Module, images: np.ndarray, size: int, bs: int = 64, tta: bool = False) -> np.ndarray:
    """Logits for cached uint8 crops (N, S, S) resized to ``size`` without augmentation.

    ``tta``: average with the left-right mirrored image (as :class:`triage.classify.Classifier`
    does when the model card says ``tta``).
    """
    net.eval()
    out = []
    gen = torch.Generator()
    for i in range(0, len(images), bs):
        x, _ = augment_batch(_to_tensor(images[i:i + bs]), None, size, gen, train=False)
        x = _normalize(x)
        logits = net(x).float()
        if tta:
            logits = (logits + net(x.flip(-1)).float()) / 2
        out.append(logits)
    return torch.cat(out).numpy() if out else np.zeros((0, len(CLASSES)), np.float32)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling: the T > 0 minimising validation NLL of softmax(logits / T)."""
    lt = torch.from_numpy(logits).float()
    yt = torch.from_numpy(y).long()
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lt / log_t.exp(), yt)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp().item())


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


@torch.no_grad()
def pooled_features(net: nn.Module, images: np.ndarray, size: int, bs: int = 64) -> np.ndarray:
    """Penultimate (pre-logits) features of a timm classifier for OOD statistics."""
    net.eval()
    feats = []
    gen = torch.Generator()
    for i in range(0, len(images), bs):
        x, _ = augment_batch(_to_tensor(images[i:i + bs]), None, size, gen, train=False)
        feats.append(net.forward_head(net.forward_features(_normalize(x)), pre_logits=True).float())
    return torch.cat(feats).numpy()


def fit_ood_stats(train_feats: np.ndarray, train_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means (C, D) and a shared Ledoit-Wolf precision matrix (D, D) for Mahalanobis OOD."""
    from sklearn.covariance import LedoitWolf

    means = np.stack([train_feats[train_y == c].mean(0) for c in range(len(CLASSES))])
    centred = train_feats - means[train_y]
    lw = LedoitWolf().fit(centred)
    return means.astype(np.float32), lw.precision_.astype(np.float32)


def mahalanobis_score(feats: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Minimum over classes of the squared Mahalanobis distance (higher = more unusual)."""
    d = feats[:, None, :] - means[None, :, :]
    return np.einsum("ncd,de,nce->nc", d, precision, d).min(1)


def _environment() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "triage": __version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def _save_checkpoint(path: Path, net: nn.Module, opt: torch.optim.Optimizer, epoch: int, best: dict,
                     history: list, gen: torch.Generator, rng_state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "best": best,
                "history": history, "gen": gen.get_state(), "np_rng": rng_state}, tmp)
    os.replace(tmp, path)


def _resume(ckpt: Path, net: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
            rng: np.random.Generator) -> tuple[int, dict, list]:
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
    if cfg.init_from:
        if weights_dir is None:
            raise TrainingError("init_from needs the weights folder")
        base = load_model(weights_dir, cfg.task, cfg.init_from)
        if base.meta.get("arch") != cfg.arch:
            raise TrainingError(f"cannot fine-tune {base.meta.get('arch')} weights into {cfg.arch}")
        net.load_state_dict(base.net.state_dict())
    return net


def _fit(cfg: TrainConfig, net: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
         rng: np.random.Generator, n_train: int, runlog: RunLog, step_loss, evaluate, desc: str,
         progress: bool, batch_weights: np.ndarray | None = None) -> tuple[list[dict], dict]:
    """The epoch loop both trainers share; ends with the best weights loaded into ``net``.

    Resumes from ``checkpoint.pt``; per batch: cosine LR (by steps or wall time), ``step_loss(idx)``,
    optimiser step, progress bar, run-log events and the cancel check; per epoch: ``evaluate()`` ->
    (selection score, record), best weights, checkpoint, early stopping. Returns (history, best).
    """
    run_dir = runlog.run_dir
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
        for bi, idx in enumerate(_batches(n_train, cfg.batch_size, rng, batch_weights)):
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
                runlog.event(kind="step", epoch=epoch, step=step, total_steps=total_steps,
                             loss=float(np.mean(losses[-10:])))
            if runlog.cancelled():
                runlog.event(kind="cancelled")
                raise TrainingError("training cancelled")
        score, record = evaluate()
        h = {"epoch": epoch, "train_loss": float(np.mean(losses)), **record, "epoch_s": time.time() - te}
        history.append(h)
        elapsed = time.time() - t0
        runlog.event(kind="epoch", total_epochs=cfg.epochs, elapsed_s=elapsed,
                     eta_s=elapsed / (epoch + 1) * (cfg.epochs - epoch - 1), **h)
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


def train_classifier(cfg: TrainConfig, train: CachedSet, val: CachedSet, run_dir: Path, out_dir: Path,
                     data_info: dict, weights_dir: Path | None = None, progress: bool = True) -> Path:
    """Train, early-stop, calibrate (temperature) and fit OOD statistics; save a model version."""
    torch.set_num_threads(cfg.threads)
    gen = _seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    runlog = RunLog(run_dir)
    (Path(run_dir) / "config.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
    y_train = np.array([CLASSES.index(label) for label in train.labels()])
    y_val = np.array([CLASSES.index(label) for label in val.labels()])
    is_tumor = y_train != CLASSES.index("no_tumor")
    if len(set(y_train.tolist())) < 2:
        raise TrainingError("the classifier needs at least two classes in the training data")
    meta = {"task": "classifier", "arch": cfg.arch, "arch_kwargs": cfg.arch_kwargs}
    net = _init_net(cfg, meta, weights_dir)
    net = net.to(memory_format=torch.channels_last)
    counts = np.bincount(y_train, minlength=len(CLASSES)).astype(np.float64)
    class_w = torch.tensor(counts.sum() / (len(CLASSES) * np.maximum(counts, 1)), dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def step_loss(idx: np.ndarray) -> torch.Tensor:
        x, _ = augment_batch(_to_tensor(train.images[idx]), None, cfg.input_size, gen, True, cfg.aug_strength,
                             sequence_probabilities(cfg, is_tumor[idx]), cfg.enhancement_aug)
        logits = net(_normalize(x).contiguous(memory_format=torch.channels_last))
        return F.cross_entropy(logits, torch.from_numpy(y_train[idx]), weight=class_w,
                               label_smoothing=cfg.label_smoothing)

    def evaluate() -> tuple[float, dict]:
        val_logits = predict_logits(net, val.images, cfg.input_size)
        rep = classification_report(y_val, softmax(val_logits))
        # Model selection favours not missing tumors: accuracy minus the tumor-miss rate.
        return rep["accuracy"] - rep["tumor_miss_rate"], {
            "val_accuracy": rep["accuracy"], "val_macro_f1": rep["macro_f1"], "val_tumor_miss": rep["tumor_miss_rate"],
            "val_loss": float(F.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(y_val)))}

    history, best = _fit(cfg, net, opt, gen, rng, len(train.images), runlog, step_loss, evaluate, "classifier",
                         progress)
    net = net.to(memory_format=torch.contiguous_format).eval()
    val_logits = predict_logits(net, val.images, cfg.input_size, tta=cfg.tta)
    temperature = fit_temperature(val_logits, y_val)
    before = classification_report(y_val, softmax(val_logits))
    after = classification_report(y_val, softmax(val_logits, temperature))
    feats = pooled_features(net, train.images, cfg.input_size)
    means, precision = fit_ood_stats(feats, y_train)
    val_ood = mahalanobis_score(pooled_features(net, val.images, cfg.input_size), means, precision)
    ood_threshold = float(np.percentile(val_ood, 99.5))
    meta.update({
        "version": Path(out_dir).name, "trained": True, "classes": list(CLASSES),
        "input_size": cfg.input_size, "in_chans": 1, "normalization": {"mean": MEAN, "std": STD, "scale": "x/255"},
        "preprocess": preprocess_description(cfg),
        "crop": cfg.crop, "intensity_norm": cfg.intensity_norm,
        "gradcam_layer": GRADCAM_LAYERS.get(cfg.arch, ""), "temperature": temperature,
        "tta": cfg.tta,
        "ood": {"method": "min class Mahalanobis distance on pre-logit features (Ledoit-Wolf)",
                "threshold": ood_threshold, "threshold_rule": "99.5th percentile of validation scores"},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "train_config": asdict(cfg), "history": history, "best_epoch": best["epoch"],
        "wall_time_min": round((time.time() - runlog.start) / 60, 2), "environment": _environment(),
        "data": data_info,
        "metrics": {"validation": {"before_calibration": before, "after_calibration": after,
                                   "ece_before": before["ece"], "ece_after": after["ece"]}},
    })
    extras = {"ood_means": torch.from_numpy(means), "ood_precision": torch.from_numpy(precision)}
    folder = save_model(Path(out_dir), net, meta, extras)
    runlog.event(kind="done", version=folder.name, val_accuracy=after["accuracy"], ece_after=after["ece"])
    runlog.close()
    return folder


SEG_LOSS_NAMES = {"batch": "MONAI DiceCELoss(sigmoid, batch=True)",
                  "batch+image": "MONAI DiceCELoss(sigmoid, batch=True) + mean per-tumor-slice DiceLoss",
                  "tversky": "MONAI TverskyLoss(sigmoid, batch=True, alpha=0.3, beta=0.7) + BCE"}


def _seg_loss(kind: str = "batch"):
    """Segmentation loss for ``TrainConfig.seg_dice``.

    "batch": Dice over the whole batch, so empty (no-tumor) masks do not blow up the loss, but a
    missed small or faint lesion weighs little next to a large meningioma in the same batch.
    "batch+image": adds each tumor slice's own Dice, as the evaluation averages it. The batch term
    stays because its denominator is what penalises masks on tumor-free slices: a per-image Dice
    alone (with BCE) raised validation false-positive masks from about 10% to 24-47% in 3 epochs.
    Dice+BCE converged faster than Dice+focal here (focal: probabilities still ~0.45 everywhere
    after one epoch on BRISC, val Dice 0.00).
    "tversky": seed 003's loss family. A missed tumor pixel costs more than a false one
    (beta 0.7 vs alpha 0.3), aimed at the faint gliomas that get no mask. Over the batch, like
    "batch", so tumor-free slices are not divided by zero.
    """
    from monai.losses import DiceCELoss, DiceLoss, TverskyLoss

    if kind not in SEG_LOSS_NAMES:
        raise ValueError(f"seg_dice must be one of {sorted(SEG_LOSS_NAMES)}, got {kind!r}")
    if kind == "tversky":
        tversky = TverskyLoss(sigmoid=True, batch=True, alpha=0.3, beta=0.7)
        bce = nn.BCEWithLogitsLoss()
        return lambda logits, masks: tversky(logits, masks) + bce(logits, masks)
    batch = DiceCELoss(sigmoid=True, batch=True)
    if kind == "batch":
        return batch
    per_image = DiceLoss(sigmoid=True, reduction="none")

    def loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        total = batch(logits, masks)
        tumor = masks.flatten(1).any(1)
        if tumor.any():
            total = total + per_image(logits[tumor], masks[tumor]).mean()
        return total

    return loss


@torch.no_grad()
def predict_masks(net: nn.Module, images: np.ndarray, size: int, bs: int = 32, tta: bool = False) -> np.ndarray:
    """Tumor probability maps (N, size, size) for cached crops (``tta``: mean with the mirror image's map)."""
    net.eval()
    out = []
    gen = torch.Generator()
    for i in range(0, len(images), bs):
        x, _ = augment_batch(_to_tensor(images[i:i + bs]), None, size, gen, train=False)
        out.append(probability_maps(net, _normalize(x), tta))
    return torch.cat(out).numpy() if out else np.zeros((0, size, size), np.float32)


def seg_selection_score(s: dict) -> float:
    """Segmenter selection: Dice on tumor slices, penalised by false-positive masks on empty ones."""
    return s["dice"] - 0.5 * s["fp_rate"]


def search_postprocess(probs: np.ndarray, truth: np.ndarray) -> tuple[dict, list[dict]]:
    """Threshold and minimum component area chosen on validation: keep Dice while pushing
    false-positive masks on tumor-free slices down. Returns (chosen, whole grid)."""
    grid = []
    for thr in (0.4, 0.5, 0.6):
        for maf in (0.0, 0.001, 0.002, 0.004):
            grid.append({"threshold": thr, "min_area_frac": maf, **seg_scores(probs, truth, thr, maf)})
    return max(grid, key=seg_selection_score), grid


def _resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(masks).float().unsqueeze(1)
    return (F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False) >= 0.5).squeeze(1).numpy()


def seg_scores(probs: np.ndarray, truth: np.ndarray, threshold: float, min_area_frac: float) -> dict:
    """Mean Dice/IoU over tumor slices, false-positive rate over empty slices."""
    dices, ious, fps = [], [], []
    min_area = min_area_frac * probs.shape[1] * probs.shape[2]
    for p, t in zip(probs, truth):
        m = remove_small_components(p >= threshold, min_area)
        if t.any():
            d, j = dice_iou(m, t)
            dices.append(d)
            ious.append(j)
        else:
            fps.append(bool(m.any()))
    return {"dice": float(np.mean(dices)) if dices else 0.0, "iou": float(np.mean(ious)) if ious else 0.0,
            "fp_rate": float(np.mean(fps)) if fps else 0.0, "n_tumor": len(dices), "n_empty": len(fps)}


def train_segmenter(cfg: TrainConfig, train: CachedSet, val: CachedSet, run_dir: Path, out_dir: Path,
                    data_info: dict, weights_dir: Path | None = None, progress: bool = True) -> Path:
    """Train the U-Net with Dice+cross-entropy, pick threshold/min-area on validation, save a version."""
    if train.masks is None or not train.masks.any():
        raise TrainingError("the segmenter needs training images with tumor masks")
    torch.set_num_threads(cfg.threads)
    gen = _seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    runlog = RunLog(run_dir)
    (Path(run_dir) / "config.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
    meta = {"task": "segmenter", "arch": cfg.arch, "arch_kwargs": cfg.arch_kwargs}
    net = _init_net(cfg, meta, weights_dir)
    loss_fn = _seg_loss(cfg.seg_dice)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    has_tumor = train.masks.reshape(len(train.masks), -1).any(1)
    weights = np.where(has_tumor, cfg.tumor_oversample, 1.0).astype(np.float64)
    val_truth = _resize_masks(val.masks, cfg.input_size) if val.masks is not None else None

    def step_loss(idx: np.ndarray) -> torch.Tensor:
        x, m = augment_batch(_to_tensor(train.images[idx]), _to_tensor(train.masks[idx]),
                             cfg.input_size, gen, True, cfg.aug_strength,
                             sequence_probabilities(cfg, has_tumor[idx]), cfg.enhancement_aug)
        return loss_fn(net(_normalize(x)), m)

    def evaluate() -> tuple[float, dict]:
        probs = predict_masks(net, val.images, cfg.input_size)
        raw = seg_scores(probs, val_truth, 0.5, 0.0)
        # Select on the masks as shipped (small specks removed): the raw false-positive rate
        # counts single-pixel specks and swings between epochs.
        post = seg_scores(probs, val_truth, 0.5, SELECTION_MIN_AREA)
        return seg_selection_score(post), {
            "val_dice": raw["dice"], "val_iou": raw["iou"], "val_fp_rate": raw["fp_rate"],
            "val_dice_post": post["dice"], "val_fp_rate_post": post["fp_rate"]}

    history, best = _fit(cfg, net, opt, gen, rng, len(train.images), runlog, step_loss, evaluate, "segmenter",
                         progress, weights if cfg.tumor_oversample != 1.0 else None)
    net.eval()
    probs = predict_masks(net, val.images, cfg.input_size, tta=cfg.tta)
    chosen, grid = search_postprocess(probs, val_truth)
    meta.update({
        "version": Path(out_dir).name, "trained": True, "input_size": cfg.input_size, "in_chans": 1,
        "normalization": {"mean": MEAN, "std": STD, "scale": "x/255"},
        "preprocess": preprocess_description(cfg),
        "crop": cfg.crop, "intensity_norm": cfg.intensity_norm,
        "threshold": chosen["threshold"], "min_area_frac": chosen["min_area_frac"],
        "tta": cfg.tta, "loss": SEG_LOSS_NAMES[cfg.seg_dice],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "train_config": asdict(cfg), "history": history, "best_epoch": best["epoch"],
        "postprocess_search": grid,
        "wall_time_min": round((time.time() - runlog.start) / 60, 2), "environment": _environment(),
        "data": data_info,
        "metrics": {"validation": chosen},
    })
    folder = save_model(Path(out_dir), net, meta)
    runlog.event(kind="done", version=folder.name, val_dice=chosen["dice"], val_fp_rate=chosen["fp_rate"])
    runlog.close()
    return folder
