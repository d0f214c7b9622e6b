"""Training and calibration of the classifier and the segmenter; writes a new model version.

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
from dataclasses import asdict, dataclass, field
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
from triage.lifecycle.sources import training_sources
from triage.metrics import classification_report, dice_iou
from triage.models import build_model, load_model, save_model
from triage.preprocess import DEFAULT_CROP, check_intensity_norm
from triage.records import CLASSES
from triage.segment import probability_maps, remove_small_components
from triage.transforms import squares_to_tensor

log = logging.getLogger(__name__)

# Presets: "full" trains a model from scratch in <= 90 min for both models on 2 cores (side by
# side, 1 thread each); "quick" (<= 10 min) is for the retraining page. The shipped versions are
# longer fine-tune lineages of the full preset (weights/README.md). Epoch caps are high enough that
# the time budget, not the cap, ends a run: caps of 16 / 14 stopped the classifier and segmenter
# after 50 / 35 min of a 65-80 min budget (measured on this CPU, 1 thread each).
PRESETS: dict[str, dict[str, dict]] = {
    "classifier": {
        # Issue 23: every shared source, per-source balance, ImageNet-initialised EfficientNet-Lite0.
        # The remap is the same for every class now that tumours come on real T2/FLAIR too.
        "multi": dict(
            arch="timm:efficientnet_lite0",
            input_size=160,
            epochs=60,
            batch_size=32,
            lr=1e-3,
            time_budget_min=150.0,
            recipe="multi_source",
            pretrained="efficientnet_lite0_imagenet",
            epoch_images=4800,
            sequence_aug=0.3,
            sequence_aug_no_tumor=0.3,
            enhancement_aug=0.3,
            skull_strip_aug=0.15,
            jpeg_aug=0.3,
        ),
        # Augmentation as shipped since v4 (class-conditional T2/FLAIR remap + enhancement suppression).
        "full": dict(
            arch="timm:regnetx_004",
            input_size=160,
            epochs=30,
            batch_size=32,
            lr=3e-3,
            time_budget_min=65.0,
            sequence_aug=0.5,
            sequence_aug_no_tumor=0.1,
            enhancement_aug=0.35,
        ),
        # Epoch and image caps high enough that the 8-min budget, not the cap, ends the run (the
        # v1 caps of 3 epochs x 1200 images stopped after 1.1-1.4 min: 5-fold CV 0.537).
        "quick": dict(
            arch="timm:regnetx_004",
            input_size=128,
            epochs=12,
            batch_size=32,
            lr=3e-3,
            max_train_images=2400,
            time_budget_min=8.0,
        ),
    },
    "segmenter": {
        # Issue 23: every shared source, U-Net on an ImageNet-initialised EfficientNet-Lite0 encoder.
        "multi": dict(
            arch="smp:Unet",
            input_size=160,
            epochs=60,
            batch_size=16,
            lr=1e-3,
            time_budget_min=150.0,
            recipe="multi_source",
            pretrained="efficientnet_lite0_imagenet",
            epoch_images=3200,
            sequence_aug=0.3,
            sequence_aug_no_tumor=0.3,
            enhancement_aug=0.3,
            skull_strip_aug=0.15,
            jpeg_aug=0.3,
            seg_dice="batch+image",
        ),
        "full": dict(arch="monai:UNet", input_size=160, epochs=30, batch_size=16, lr=3e-3, time_budget_min=65.0),
        "quick": dict(
            arch="monai:UNet",
            input_size=128,
            epochs=10,
            batch_size=16,
            lr=2e-3,
            max_train_images=1600,
            time_budget_min=8.0,
        ),
    },
}

ARCH_KWARGS = {
    "timm:regnetx_004": {"num_classes": len(CLASSES), "in_chans": 1, "drop_rate": 0.2},
    "monai:UNet": {
        "in_channels": 1,
        "out_channels": 1,
        "channels": [16, 32, 64, 128, 256],
        "strides": [2, 2, 2, 2],
        "num_res_units": 1,
    },
    "timm:efficientnet_lite0": {"num_classes": len(CLASSES), "in_chans": 1, "drop_rate": 0.2},
    # A light decoder: the default (256..16) doubles the segmenter's CPU time for no measured gain here.
    "smp:Unet": {
        "encoder_name": "tu-efficientnet_lite0",
        "in_channels": 1,
        "classes": 1,
        "decoder_channels": [96, 48, 24, 16, 8],
    },
}
GRADCAM_LAYERS = {"timm:regnetx_004": "s4", "timm:efficientnet_lite0": "bn2"}
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
    # "standard" (triage.recipe: BRISC + Sartaj) or "multi_source" (triage.sources: every shared set).
    recipe: str = "standard"
    # None, or a name in triage.pretrained.PRETRAINED_NAMES: ImageNet start, training time only.
    pretrained: str | None = None
    # Images per epoch drawn with per-source balance (None: one pass over the training set).
    epoch_images: int | None = None
    # Per-image probabilities of augment.strip_skull and augment.jpeg_degrade (source shortcuts).
    skull_strip_aug: float = 0.0
    jpeg_aug: float = 0.0
    # Multi-source recipe: per-source batch shares that replace the defaults in triage.sources
    # (None: CLASSIFIER_SHARES / SEGMENTER_SHARES). v13 raised Sartaj's share after v12 missed more Sartaj tumours.
    source_shares: dict | None = None
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
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; expected one of {RECIPES}")
        if not 0.0 <= self.skull_strip_aug <= 1.0:
            raise ValueError(f"skull_strip_aug is a probability, got {self.skull_strip_aug}")
        if self.source_shares is not None:
            bad = {k: v for k, v in self.source_shares.items() if not (isinstance(v, (int, float)) and v >= 0)}
            if bad or not any(self.source_shares.values()):
                raise ValueError(f"source_shares must be non-negative numbers, not all zero; got {self.source_shares}")


RECIPES = ("standard", "multi_source")


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


@torch.no_grad()
def predict_logits(net: nn.Module, images: np.ndarray, size: int, bs: int = 64, tta: bool = False) -> np.ndarray:
    """Logits for cached uint8 crops (N, S, S) resized to ``size`` without augmentation.

    ``tta``: average with the left-right mirrored image (as :class:`triage.classify.Classifier`
    does when the model card says ``tta``).
    """
    net.eval()
    out = []
    for i in range(0, len(images), bs):
        x = squares_to_tensor(images[i : i + bs], size, MEAN, STD)
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
    for i in range(0, len(images), bs):
        x = squares_to_tensor(images[i : i + bs], size, MEAN, STD)
        feats.append(net.forward_head(net.forward_features(x), pre_logits=True).float())
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


def partial_label_loss(logits: torch.Tensor, allowed: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against a *set* of allowed classes: ``-log(sum of their probabilities)``.

    A one-class set is ordinary cross-entropy (with label smoothing, as F.cross_entropy does it);
    the set "every tumour class" teaches that a lesion of another type (Feltrin's schwannomas,
    granulomas...) is anything but ``no_tumor`` without inventing which tumour it is.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    nll = -torch.logsumexp(logp.masked_fill(~allowed, float("-inf")), dim=1)
    return ((1 - smoothing) * nll - smoothing * logp.mean(1)).mean()


def fit_temperature_sets(logits: np.ndarray, allowed: np.ndarray) -> float:
    """Temperature minimising the validation partial-label NLL (:func:`partial_label_loss`)."""
    lt, at = torch.from_numpy(logits).float(), torch.from_numpy(allowed)
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = partial_label_loss(lt / log_t.exp(), at)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp().item())


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


SEG_LOSS_NAMES = {
    "batch": "MONAI DiceCELoss(sigmoid, batch=True)",
    "batch+image": "MONAI DiceCELoss(sigmoid, batch=True) + mean per-tumor-slice DiceLoss",
    "tversky": "MONAI TverskyLoss(sigmoid, batch=True, alpha=0.3, beta=0.7) + BCE",
}


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
    for i in range(0, len(images), bs):
        out.append(probability_maps(net, squares_to_tensor(images[i : i + bs], size, MEAN, STD), tta))
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
    return {
        "dice": float(np.mean(dices)) if dices else 0.0,
        "iou": float(np.mean(ious)) if ious else 0.0,
        "fp_rate": float(np.mean(fps)) if fps else 0.0,
        "n_tumor": len(dices),
        "n_empty": len(fps),
    }


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
    loss_fn = _seg_loss(cfg.seg_dice)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    has_tumor = train.masks.reshape(len(train.masks), -1).any(1)
    weights = np.where(has_tumor, cfg.tumor_oversample, 1.0).astype(np.float64)
    if sample_weights is not None:
        weights = sample_weights * weights
    val_truth = _resize_masks(val.masks, cfg.input_size) if val.masks is not None else None
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
