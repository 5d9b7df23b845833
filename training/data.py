"""Datasets from their standard on-disk formats, as images in [0, 1] (uint8 or float tensors).

| name        | where under ``data_dir``                                          | classes | shape      |
|-------------|-------------------------------------------------------------------|---------|------------|
| digits      | bundled with scikit-learn (8x8, seeded 80/20 stratified split)    | 10      | 1 x 8 x 8  |
| cifar10     | ``cifar-10-batches-py/data_batch_1..5, test_batch``               | 10      | 3 x 32 x 32|
| cifar100    | ``cifar-100-python/train, test``                                  | 100     | 3 x 32 x 32|
| svhn        | ``svhn/train_32x32.mat, test_32x32.mat`` (or directly in data_dir)| 10      | 3 x 32 x 32|
| imagenet    | ``imagenet/train/<class>/*``, ``imagenet/val/<class>/*``          | 1000    | 3 x 224 x 224|
| imagefolder | ``train/<class>/*``, ``val/<class>/*`` (or ``test/``)              | folders | 3 x 224 x 224|

Nothing is downloaded unless ``download=True`` (CIFAR and SVHN, through torchvision).
Small datasets are held in memory as uint8 tensors; their training augmentation
(random crop with 4 pixels of padding, horizontal flip) runs on whole batches on the
training device, drawn from a generator seeded per epoch so that it is identical for the
two models of a matched pair and on resume.
"""
from __future__ import annotations

import pickle
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from filterdb.errors import FilterDBError

DIGITS_SPLIT_SEED = 0


class _BatchUnpickler(pickle.Unpickler):
    """Reads a CIFAR python batch (a dict of bytes, lists and numpy arrays) without running pickled code:
    only numpy's array reconstruction is resolved; any other global (a hostile payload) is refused."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch")
DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # C, H, W
    augment: str  # "crop-flip", "crop", "none" (batch augmentation), "transform" (in the loader)

    @property
    def in_chans(self) -> int:
        return self.input_shape[0]


_INFO = {
    "digits": DatasetInfo("digits", 10, (1, 8, 8), "none"),
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), "crop-flip"),
    "cifar100": DatasetInfo("cifar100", 100, (3, 32, 32), "crop-flip"),
    "svhn": DatasetInfo("svhn", 10, (3, 32, 32), "crop"),
    "imagenet": DatasetInfo("imagenet", 1000, (3, 224, 224), "transform"),
    "imagefolder": DatasetInfo("imagefolder", -1, (3, 224, 224), "transform"),
}
DATASETS = tuple(_INFO)


class TensorImages(Dataset):
    """Images (N, C, H, W) as uint8 or float in [0, 1], with int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def default_data_dir() -> Path:
    from filterdb.paths import home
    return home() / "data"


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """Classes, input shape and augmentation of a dataset (for imagefolder: its class folders)."""
    name = name.lower()
    if name not in _INFO:
        raise FilterDBError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    info = _INFO[name]
    if name == "imagefolder":
        train = _folder_root(name, Path(data_dir or default_data_dir())) / "train"
        classes = [p for p in train.iterdir() if p.is_dir()]
        info = DatasetInfo(name, len(classes), info.input_shape, info.augment)
    return info


def load_dataset(name: str, split: str, data_dir: str | Path | None = None, download: bool = False) -> Dataset:
    """The ``train`` or ``test`` split of a dataset, yielding (image, label) pairs."""
    name = name.lower()
    dataset_info(name, data_dir)  # validates the name
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if name == "digits":
        return _digits(split)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root, split, download)
    if name == "svhn":
        return _svhn(root, split, download)
    return _image_folder(name, root, split)


def _digits(split: str) -> TensorImages:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION,
                                           random_state=DIGITS_SPLIT_SEED, stratify=bunch.target)
    idx = torch.from_numpy(np.sort(train_idx if split == "train" else test_idx))
    return TensorImages(images[idx], labels[idx])


_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", "CIFAR-10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", "CIFAR-100"),
}


def _cifar(name: str, root: Path, split: str, download: bool) -> TensorImages:
    folder, train_files, test_files, label_key, title = _CIFAR_FILES[name]
    base = root if (root / (train_files + test_files)[0]).exists() and root.name == folder else root / folder
    wanted = train_files if split == "train" else test_files
    missing = [f for f in train_files + test_files if not (base / f).is_file()]
    if missing and download:
        import torchvision
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        cls(root=str(root), train=split == "train", download=True)
        base = root / folder
        missing = [f for f in wanted if not (base / f).is_file()]
    if any(f in missing for f in wanted):
        raise FilterDBError(f"{title} not found: expected {base}/{{{','.join(train_files + test_files)}}} "
                            f"(the 'python version' archive, unpacked); pass --data-dir DIR or --download")
    images, labels = [], []
    for f in wanted:
        path = base / f
        try:
            with open(path, "rb") as fh:
                batch = _BatchUnpickler(fh, encoding="bytes").load()
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            lab = np.asarray(batch[label_key], dtype=np.int64)
        except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
            raise FilterDBError(f"{path} is not a valid {title} batch ({type(exc).__name__}: {exc}); "
                                f"replace it with the file from the {title} python archive or pass --download") from None
        if len(data) != len(lab):
            raise FilterDBError(f"{path} is not a valid {title} batch: {len(data)} images but {len(lab)} labels")
        images.append(torch.from_numpy(data))
        labels.append(torch.from_numpy(lab))
    return TensorImages(torch.cat(images), torch.cat(labels))


def _svhn(root: Path, split: str, download: bool) -> TensorImages:
    import scipy.io

    filename = f"{split}_32x32.mat"
    candidates = [root / "svhn" / filename, root / filename]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None and download:
        import torchvision
        torchvision.datasets.SVHN(root=str(root / "svhn"), split=split, download=True)
        path = candidates[0]
    if path is None:
        raise FilterDBError(f"SVHN not found: expected {candidates[0]} (format 2, cropped digits, from "
                            f"http://ufldl.stanford.edu/housenumbers/); pass --data-dir DIR or --download")
    try:
        mat = scipy.io.loadmat(str(path))
        data = np.transpose(np.asarray(mat["X"], dtype=np.uint8), (3, 2, 0, 1))  # (32, 32, 3, N) -> N, C, H, W
        lab = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10  # the digit 0 is stored as 10
    except Exception as exc:  # noqa: BLE001
        raise FilterDBError(f"{path} is not a valid SVHN .mat file ({type(exc).__name__}: {exc}); "
                            f"replace it with {filename} from the SVHN site or pass --download") from None
    if data.shape[1:] != (3, 32, 32) or len(data) != len(lab):
        raise FilterDBError(f"{path} is not a valid SVHN .mat file: images {data.shape}, {len(lab)} labels")
    return TensorImages(torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(lab))


def _folder_root(name: str, root: Path) -> Path:
    base = root / name if (root / name / "train").is_dir() else root
    if not (base / "train").is_dir():
        raise FilterDBError(f"{name} not found: expected class folders under {root / name / 'train'} "
                            f"(or {root / 'train'}), ImageFolder layout; pass --data-dir DIR")
    return base


def _image_folder(name: str, root: Path, split: str) -> Dataset:
    import torchvision
    from torchvision import transforms as T

    base = _folder_root(name, root)
    folder = base / "train" if split == "train" else next((base / s for s in ("val", "test") if (base / s).is_dir()), None)
    if folder is None:
        raise FilterDBError(f"{name}: no evaluation split; expected class folders under {base / 'val'} or {base / 'test'}")
    size = _INFO[name].input_shape[1]
    if split == "train":
        tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.PILToTensor()])
    else:
        tf = T.Compose([T.Resize(size * 8 // 7), T.CenterCrop(size), T.PILToTensor()])
    try:
        return torchvision.datasets.ImageFolder(str(folder), transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise FilterDBError(f"{folder}: not a valid ImageFolder tree ({exc})") from None


def train_val_split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Hold out a seeded ``val_fraction`` of the training set for checkpoint selection."""
    if val_fraction <= 0:
        return dataset, None
    n = len(cast(Sized, dataset))
    n_val = max(1, int(round(n * val_fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return Subset(dataset, train_idx.tolist()), Subset(dataset, val_idx.tolist())


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float in [0, 1]; float images pass through."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop (zero padding) and, for ``crop-flip``, horizontal flip of a whole batch on its device.

    The random draws come from ``generator`` (on the CPU), so that the augmentation is the
    same whichever device and whatever else consumed the global random state.
    """
    if kind in ("none", "transform"):
        return x
    b, _, h, w = x.shape
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    flip = torch.rand(b, generator=generator).to(x.device) < 0.5
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bidx = torch.arange(b, device=x.device)[:, None, None, None]
    cidx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[bidx, cidx, rows, cols]
    if kind == "crop-flip":
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out
