"""Normally trained ImageNet models from timm and torchvision: ``filterdb add timm:resnet50``.

Weights come through each library's own cache (timm: the Hugging Face hub cache or
torch hub's; torchvision: ``<torch hub dir>/checkpoints``). A cached file is used
without touching the network. With ``FILTERDB_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) a
file that is not cached is a clear error instead of a download. The forward pass that
orders the layers runs at the model's own input size: timm's ``pretrained_cfg.input_size``,
torchvision's evaluation crop (``--input-shape`` overrides it).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from filterdb.errors import FilterDBError
from filterdb.sources.base import LoadedModel, ModelSpec

LIBRARIES = ("timm", "torchvision")
INPUT_SHAPE = (3, 224, 224)
# Library model name -> the architecture name RobustBench's leaderboards use, so that `filterdb pairs` can match.
ARCHITECTURES = {
    "resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50", "resnet101": "ResNet-101",
    "resnet152": "ResNet-152", "wide_resnet50_2": "WideResNet-50-2", "wide_resnet101_2": "WideResNet-101-2",
    "convnext_tiny": "ConvNeXt-T", "convnext_small": "ConvNeXt-S", "convnext_base": "ConvNeXt-B",
    "convnext_large": "ConvNeXt-L", "alexnet": "AlexNet", "vit_base_patch16_224": "ViT-B", "vit_b_16": "ViT-B",
    "swin_base_patch4_window7_224": "Swin-B", "swin_large_patch4_window7_224": "Swin-L",
}
# RobustBench ImageNet architecture -> the pretrained normal model built by the same constructor.
COUNTERPARTS = {
    "ResNet-18": "torchvision:resnet18", "ResNet-50": "torchvision:resnet50",
    "WideResNet-50-2": "torchvision:wide_resnet50_2", "ConvNeXt-B": "timm:convnext_base",
    "ConvNeXt-L": "timm:convnext_large", "Swin-B": "timm:swin_base_patch4_window7_224",
    "Swin-L": "timm:swin_large_patch4_window7_224", "ViT-B": "timm:vit_base_patch16_224",
}


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("FILTERDB_OFFLINE", "HF_HUB_OFFLINE"))


def architecture(name: str) -> str:
    base = name.split(".", 1)[0]
    return ARCHITECTURES.get(base, base)


def pretrained_spec(library: str, name: str) -> ModelSpec:
    """The spec of a pretrained model; ``name`` may carry a weights tag (timm ``resnet50.a1_in1k``,
    torchvision ``resnet50.IMAGENET1K_V1``; default: the library's default weights)."""
    if library not in LIBRARIES:
        raise FilterDBError(f"unknown library {library!r}; valid: {', '.join(LIBRARIES)}")
    if not name:
        raise FilterDBError(f"give a model name after '{library}:', e.g. {library}:resnet50")
    record = {"dataset": "imagenet", "training": "normal", "training_method": "standard",
              "architecture": architecture(name), "extra_data": False}
    return ModelSpec(library, name, record=record, load=functools.partial(load, library=library))


def load(spec: ModelSpec, *, library: str) -> LoadedModel:
    model, path, input_shape = (_load_timm if library == "timm" else _load_torchvision)(spec)
    return LoadedModel(spec, [model.eval()], input_shape, weights_path=path)


def timm_input_shape(cfg) -> tuple[int, int, int]:
    """The input size of a timm model's pretrained configuration (``pretrained_cfg.input_size``)."""
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    if not size or len(size) != 3:
        return INPUT_SHAPE
    c, h, w = (int(s) for s in size)
    return c, h, w


def torchvision_input_shape(weights) -> tuple[int, int, int]:
    """The crop size of a torchvision weights entry's evaluation transform (e.g. 299 for inception_v3)."""
    crop = getattr(weights.transforms, "keywords", {}).get("crop_size")
    if isinstance(crop, (list, tuple)):
        crop = crop[0]
    return (3, int(crop), int(crop)) if crop else INPUT_SHAPE


# Seconds to wait for the weights' server to accept a connection before saying there is no network
# (the libraries' own downloads retry for half a minute first).
CONNECT_TIMEOUT = 5.0


def _fetch(spec: ModelSpec, cached: Path | None, fetch, url: str) -> Path:
    """The cached weights file, fetched into the library's cache when missing (never when offline;
    at once an error when ``url``'s server cannot be reached)."""
    if cached is not None and cached.is_file():
        return cached
    if offline():
        raise FilterDBError(f"{spec.key}: pretrained weights are not in the local cache"
                            f"{f' ({cached})' if cached else ''} and offline mode forbids downloading them; "
                            "run once with network access (unset FILTERDB_OFFLINE) to fill the cache")
    _check_reachable(spec, url)
    try:
        import warnings

        with warnings.catch_warnings():  # the hub's deprecation notices are not the user's business
            warnings.simplefilter("ignore", FutureWarning)
            return Path(fetch())
    except Exception as exc:  # noqa: BLE001 - network, hub or HTTP errors all mean the same to the user
        raise FilterDBError(f"{spec.key}: could not download pretrained weights ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); check the network") from exc


def _check_reachable(spec: ModelSpec, url: str) -> None:
    """One quick connection to the server of ``url``; a clear error if there is none."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise FilterDBError(f"{spec.key}: pretrained weights are not in the local cache and {parsed.hostname}:{port} "
                            f"cannot be reached ({exc.strerror or type(exc).__name__}); connect to the network "
                            "once to fill the cache, or pass --offline to use cached weights only") from None


def _load_timm(spec: ModelSpec):
    import warnings

    import torch
    with warnings.catch_warnings():  # timm's import trips torch.jit's deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        import timm

    if not timm.is_model(spec.name.split(".", 1)[0]):
        raise FilterDBError(f"{spec.key}: timm has no model {spec.name!r}; 'timm.list_models(pretrained=True)' "
                            "lists them")
    cfg = timm.models.get_pretrained_cfg(spec.name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise FilterDBError(f"{spec.key}: timm has no pretrained weights for {spec.name!r}")
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        cached = next((Path(p) for f in filenames
                       if isinstance(p := try_to_load_from_cache(cfg.hf_hub_id, f), str)), None)
        from huggingface_hub import constants

        path = _fetch(spec, cached, lambda: hf_hub_download(cfg.hf_hub_id, filenames[0]), constants.ENDPOINT)
    else:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        path = _fetch(spec, cached, lambda: _torch_hub_download(cfg.url, cached), cfg.url)
    model = timm.create_model(spec.name, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    return model, path, timm_input_shape(cfg)


def _load_torchvision(spec: ModelSpec):
    import torch
    import torchvision

    base, _, tag = spec.name.partition(".")
    try:
        enum = torchvision.models.get_model_weights(base)
    except ValueError as exc:
        raise FilterDBError(f"{spec.key}: torchvision has no model {base!r}; "
                            "'torchvision.models.list_models()' lists them") from exc
    try:
        weights = enum[tag] if tag else enum.DEFAULT
    except KeyError as exc:
        raise FilterDBError(f"{spec.key}: no weights {tag!r} for {base}; valid: "
                            f"{', '.join(w.name for w in enum)}") from exc
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    path = _fetch(spec, cached, lambda: _torch_hub_download(weights.url, cached), weights.url)
    model = torchvision.models.get_model(base, weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model, path, torchvision_input_shape(weights)


def _torch_hub_download(url: str, path: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, os.fspath(path), progress=False)
    return path
