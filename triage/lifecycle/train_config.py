"""What a training run is asked to do: the presets, the architectures' arguments and :class:`TrainConfig`.

Pure configuration (no torch): the Training page, the jobs launcher and the CLI read it without
loading the training loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from triage.preprocess import DEFAULT_CROP, check_intensity_norm
from triage.records import CLASSES

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


MEAN, STD = 0.2, 0.25  # normalisation of [0, 1] grey crops (close to the BRISC crop statistics)

# The segmenter's loss options (TrainConfig.seg_dice) and the card's description of each (losses.seg_loss).
SEG_LOSS_NAMES = {
    "batch": "MONAI DiceCELoss(sigmoid, batch=True)",
    "batch+image": "MONAI DiceCELoss(sigmoid, batch=True) + mean per-tumor-slice DiceLoss",
    "tversky": "MONAI TverskyLoss(sigmoid, batch=True, alpha=0.3, beta=0.7) + BCE",
}


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
