"""Build models from their model card and load/save versioned model folders.

A model version is a folder ``weights/<task>/<version>/`` with ``model.safetensors`` (weights
only, never pickle) and ``metadata.json`` (architecture, class order, input size,
normalisation, Grad-CAM layer, temperature, data, metrics). ``weights/<task>/ACTIVE`` names the
active version; promotion rewrites it atomically. Nothing is ever downloaded.

Each version also holds ``model.onnx`` + ``onnx.json`` (:mod:`triage.onnx_export`), written when
the version is created and checked against the torch outputs; the analysis path runs that file
with ONNX Runtime and never imports torch. The torch network is built only when something asks
for :attr:`LoadedModel.net` (Grad-CAM, training, calibration, or a version without ONNX).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from triage import atomic
from triage.card import ModelCard
from triage.errors import ModelBrokenError, ModelNotFoundError

if TYPE_CHECKING:  # torch is imported where a network is built, never on the ONNX analysis path
    import torch
    from torch import nn

log = logging.getLogger(__name__)

TASKS = ("classifier", "segmenter")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def build_model(meta: dict | ModelCard) -> nn.Module:
    """Instantiate an untrained network from a card (``arch`` + ``arch_kwargs``).

    ``timm:<name>`` builds a timm classifier with ``pretrained=False``; ``monai:UNet`` builds a
    MONAI 2D U-Net; ``smp:Unet`` a segmentation_models_pytorch U-Net (timm encoder, no weights
    downloaded). Unknown architectures raise ValueError.
    """
    if isinstance(meta, ModelCard):
        arch, kwargs = meta.arch, dict(meta.arch_kwargs)
    else:  # training builds the network from the card dict it is about to write
        arch, kwargs = meta["arch"], dict(meta.get("arch_kwargs", {}))
    if arch.startswith("timm:"):
        import timm

        return timm.create_model(arch[5:], pretrained=False, **kwargs)
    if arch == "monai:UNet":
        from monai.networks.nets import UNet

        kwargs.setdefault("spatial_dims", 2)
        return UNet(**kwargs)
    if arch == "smp:Unet":
        import segmentation_models_pytorch as smp

        # encoder_weights=None: smp would otherwise download ImageNet weights.
        return smp.Unet(encoder_weights=None, **kwargs)
    raise ValueError(f"unknown architecture {arch!r}; expected 'timm:<name>', 'monai:UNet' or 'smp:Unet'")


@dataclass
class LoadedModel:
    """A model version: its card, folder and extra arrays; the torch network is built on first use.

    ``meta`` is ``metadata.json`` as a dict (calibration edits it and writes it back); readers use
    ``card``, the :class:`~triage.card.ModelCard` parsed from it when the version loads.
    ``extras`` are NumPy arrays (e.g. the classifier's OOD statistics). ``net`` builds the torch
    module from ``model.safetensors`` the first time it is read (thread-safe) and keeps it in eval
    mode; reading it imports torch.
    """

    task: str
    version: str
    path: Path
    meta: dict
    extras: dict
    _net: nn.Module | None = field(default=None, repr=False)
    _net_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _card: ModelCard | None = field(default=None, repr=False)
    _card_source: dict | None = field(default=None, repr=False)

    @property
    def card(self) -> ModelCard:
        """The parsed card (ValueError for an unusable one); parsed again only if ``meta`` was edited
        since, so a caller that changes the dict (calibration, a test) never reads a stale record."""
        if self._card is None or self._card_source != self.meta:
            self._card = ModelCard.from_meta(self.meta, task=self.task, version=self.version)
            self._card_source = copy.deepcopy(self.meta)
        return self._card

    @property
    def trained(self) -> bool:
        return self.card.trained

    @property
    def net(self) -> nn.Module:
        with self._net_lock:
            if self._net is None:
                self._net = _build_from_folder(self.card, self.path)
            return self._net


def task_dir(weights_dir: Path, task: str) -> Path:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return Path(weights_dir) / task


def list_versions(weights_dir: Path, task: str) -> list[str]:
    """Version folder names that hold a model, oldest first by name."""
    d = task_dir(weights_dir, task)
    if not d.is_dir():
        return []
    return sorted(
        p.name for p in d.iterdir() if (p / "metadata.json").is_file() and (p / "model.safetensors").is_file()
    )


def active_version(weights_dir: Path, task: str) -> str:
    """The version named in ``ACTIVE``.

    A missing, unreadable or dangling pointer is an error, never a silent switch to the
    newest-named version: that one may never have been promoted (issue 22, item 14).
    """
    d = task_dir(weights_dir, task)
    versions = list_versions(weights_dir, task)
    if not versions:
        raise ModelNotFoundError(
            f"no {task} model in {d}; train one with `python -m triage train {task}` or restore weights/"
        )
    hint = f"promote one with `python -m triage promote {task} <version>` (available: {', '.join(versions)})"
    try:
        name = (d / "ACTIVE").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ModelNotFoundError(f"no active {task} version ({d / 'ACTIVE'} is missing); {hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelNotFoundError(f"the {task} ACTIVE pointer cannot be read ({exc}); {hint}") from None
    if name not in versions:
        raise ModelNotFoundError(
            f"the {task} ACTIVE pointer names {name[:64]!r}, which is not a complete version; {hint}"
        )
    return name


def set_active(weights_dir: Path, task: str, version: str) -> None:
    """Atomically point ``ACTIVE`` at ``version`` (which must exist)."""
    if version not in list_versions(weights_dir, task):
        raise ModelNotFoundError(f"{task} version {version!r} does not exist")
    atomic.write_text(task_dir(weights_dir, task) / "ACTIVE", version + "\n")


def read_metadata(weights_dir: Path, task: str, version: str) -> dict:
    """A version's ``metadata.json`` as the dict on disk (for code that rewrites it)."""
    return json.loads((task_dir(weights_dir, task) / version / "metadata.json").read_text(encoding="utf-8"))


def read_card(weights_dir: Path, task: str, version: str) -> ModelCard:
    """A version's card as a :class:`~triage.card.ModelCard` (OSError / ValueError when unusable)."""
    return ModelCard.from_meta(read_metadata(weights_dir, task, version), task=task, version=version)


def load_model(weights_dir: Path, task: str, version: str | None = None) -> LoadedModel:
    """A model version (the active one by default): card, extras and a checked weights file.

    The safetensors header is read and checked (names, shapes, file length) without building the
    network, so a truncated file fails here with a clear reason rather than at the first scan.
    """
    version = version or active_version(weights_dir, task)
    if not _VERSION_RE.match(version):
        raise ModelNotFoundError(f"invalid version name {version!r}")
    folder = task_dir(weights_dir, task) / version
    try:
        meta = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
        card = ModelCard.from_meta(meta, task=task, version=version)  # defaults and checks: triage.card
        check_weights_file(folder / "model.safetensors")
        extras = {}
        extra_file = folder / "extras.safetensors"
        if extra_file.is_file():
            from safetensors.numpy import load_file

            extras = load_file(str(extra_file))
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"{task} version {version!r} is incomplete: {exc.filename} is missing") from exc
    except Exception as exc:  # JSON, safetensors header/length and OS errors: all mean "this version is broken"
        raise ModelBrokenError(f"{task} version {version!r} is broken: {type(exc).__name__}: {exc}") from exc
    model = LoadedModel(task=task, version=version, path=folder, meta=meta, extras=extras)
    model._card, model._card_source = card, copy.deepcopy(meta)
    return model


def check_weights_file(path: Path) -> list[str]:
    """Tensor names in a safetensors file whose header and length are consistent (else ValueError)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        return list(fh.keys())


def _build_from_folder(meta: dict | ModelCard, folder: Path) -> nn.Module:
    from safetensors.torch import load_file

    net = build_model(meta)
    net.load_state_dict(load_file(str(folder / "model.safetensors")))
    net.eval()
    return net


def save_model(
    folder: Path,
    net: nn.Module,
    meta: dict,
    extras: dict[str, torch.Tensor | np.ndarray] | None = None,
    onnx: bool = True,
) -> Path:
    """Write ``model.safetensors`` (+ optional ``extras.safetensors``), ``metadata.json`` and, with
    ``onnx``, the checked ONNX export the analysis path runs (:func:`triage.onnx_export.export_onnx`).

    The folder is written under a temporary name and renamed at the end, so a crash never
    leaves a half-written version that ``list_versions`` would pick up.
    """
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} already exists; versions are never overwritten")
    if not _VERSION_RE.match(folder.name):
        raise ValueError(f"invalid version name {folder.name!r}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp"))
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    if extras:
        tensors = {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in extras.items()}
        save_file(tensors, str(tmp / "extras.safetensors"))
    (tmp / "metadata.json").write_text(
        json.dumps(meta, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8"
    )
    if onnx:
        from triage.onnx_export import export_onnx

        export_onnx(net, meta, tmp)
    atomic.replace_dir(tmp, folder)
    return folder


def resolve_module(net: nn.Module, dotted: str) -> nn.Module:
    """``"layer4"`` / ``"blocks.-1"`` -> the submodule (negative indexes allowed)."""
    from torch import nn

    mod: nn.Module = net
    for part in dotted.split("."):
        if part.lstrip("-").isdigit():
            mod = list(mod.children())[int(part)] if not isinstance(mod, nn.Sequential) else mod[int(part)]
        else:
            mod = getattr(mod, part)
    return mod
