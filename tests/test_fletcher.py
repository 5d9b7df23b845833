"""Exports carry HDF5's Fletcher-32 checksum on every chunk of their filters, so that a reader with
h5py alone (no filterdb) gets an error, never wrong filters, from a damaged file; exports of the
older contiguous layout (format 1.0) still read as before."""
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from cli_results import one_error_line, run
from torch import nn

from filterdb import open_database
from filterdb.build import add_module
from filterdb.packed import CHUNK_BYTES, PACKED_VERSION
from filterdb.store import FilterDB

N_FLIPS = 30


def wide_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 16, 1))


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """Two models, 82,304 3x3 filters (twelve chunks of 256 KiB) and 8,192 1x1 filters, exported by the CLI."""
    home = tmp_path_factory.mktemp("fletcher")
    with FilterDB.open(home / "db", "a") as db:
        for i in range(2):
            add_module(db, wide_model(i), source="test", name=f"wide-{i}", input_shape=(3, 4, 4),
                       record={"training": "robust" if i else "normal"})
    out = home / "filters.h5"
    result = run("export", out, "--db", home / "db")
    assert result.exit_code == 0, result.output
    return out


def plain_read(path: Path) -> dict[str, np.ndarray]:
    """Every filter dataset of ``path`` with h5py alone."""
    with h5py.File(path, "r") as f:
        return {kernel: f["filters"][kernel][()] for kernel in f["filters"]}


def filter_byte_ranges(path: Path) -> list[tuple[int, int]]:
    """(file offset, size) of every stored chunk (or the contiguous data) of every filter dataset."""
    ranges = []
    with h5py.File(path, "r") as f:
        for kernel in f["filters"]:
            ds = f["filters"][kernel]
            if ds.chunks:
                ranges += [(ds.id.get_chunk_info(i).byte_offset, ds.id.get_chunk_info(i).size)
                           for i in range(ds.id.get_num_chunks())]
            else:
                ranges.append((ds.id.get_offset(), ds.id.get_storage_size()))
    return ranges


def xor_byte(path: Path, offset: int, mask: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ mask]))


def seeded_flips(path: Path, seed: int = 0) -> list[tuple[int, int]]:
    """``N_FLIPS`` (offset, xor mask) in the filter data of ``path``, each chunk weighted by its size."""
    rng = np.random.default_rng(seed)
    ranges = filter_byte_ranges(path)
    sizes = np.array([size for _, size in ranges], np.float64)
    flips = []
    for _ in range(N_FLIPS):
        offset, size = ranges[rng.choice(len(ranges), p=sizes / sizes.sum())]
        flips.append((offset + int(rng.integers(size)), int(rng.integers(1, 256))))
    return flips


def outcomes(path: Path, intact: dict[str, np.ndarray]) -> list[str]:
    """Per seeded flip (undone after the read): 'raised', 'intact' or 'WRONG' (silently wrong filters)."""
    found = []
    for offset, mask in seeded_flips(path):
        xor_byte(path, offset, mask)
        try:
            got = plain_read(path)
        except OSError:
            found.append("raised")
        else:
            same = got.keys() == intact.keys() and all(np.array_equal(got[k], intact[k]) for k in intact)
            found.append("intact" if same else "WRONG")
        finally:
            xor_byte(path, offset, mask)
    return found


def test_the_export_is_chunked_with_fletcher32(export):
    with h5py.File(export, "r") as f:
        assert f.attrs["encoding-version"] == PACKED_VERSION == "1.1"
        three = f["filters/3x3"]
        assert three.shape == (82304, 3, 3) and three.fletcher32 and three.chunks == (CHUNK_BYTES // 36, 3, 3)
        assert three.id.get_num_chunks() == -(-82304 // (CHUNK_BYTES // 36)) == 12 and f["filters/1x1"].chunks == (8192, 1, 1)
    with open_database(export) as db:  # the same filters as the database they were exported from
        with open_database(export.parent / "db") as source:
            for (row, got), (source_row, want) in zip(db.iter_layers(), source.iter_layers(), strict=True):
                assert (row["model_id"], row["name"]) == (source_row["model_id"], source_row["name"])
                np.testing.assert_array_equal(got, want)


def test_30_seeded_flips_read_with_plain_h5py_raise_never_return_wrong_filters(export, tmp_path):
    path = tmp_path / "copy.h5"
    shutil.copyfile(export, path)
    intact = plain_read(path)
    found = outcomes(path, intact)
    assert "WRONG" not in found, found
    # A one-byte change always changes a chunk's Fletcher-32 sum (or the stored sum itself): every flip raises.
    assert found == ["raised"] * N_FLIPS
    assert plain_read(path).keys() == intact.keys()  # every flip was undone


def as_format_1_0(export: Path, out: Path) -> Path:
    """``export`` rewritten as filterdb wrote exports before format 1.1: contiguous, unfiltered filters."""
    shutil.copyfile(export, out)
    with h5py.File(out, "r+") as f:
        for kernel in list(f["filters"]):
            old = f["filters"][kernel]
            data, attrs = old[()], dict(old.attrs)
            del f["filters"][kernel]
            new = f["filters"].create_dataset(kernel, data=data)
            new.attrs.update(attrs)
        f.attrs["encoding-version"] = f.attrs["format_version"] = "1.0"
    return out


def test_exports_of_format_1_0_read_as_before(export, tmp_path):
    old = as_format_1_0(export, tmp_path / "old.h5")
    with h5py.File(old, "r") as f:
        assert f["filters/3x3"].chunks is None and not f["filters/3x3"].fletcher32
    with open_database(old) as db, open_database(export) as new:
        assert db.models.equals(new.models)
        for (_, got), (_, want) in zip(db.iter_layers(), new.iter_layers(), strict=True):
            np.testing.assert_array_equal(got, want)
    assert run("verify", "--db", old).exit_code == 0
    # What format 1.1 fixes: the same flips read with plain h5py from the old layout return wrong filters.
    found = outcomes(old, plain_read(old))
    assert "raised" not in found and found.count("WRONG") >= N_FLIPS - 2


def test_a_damaged_chunk_is_one_line_through_filterdb(export, tmp_path):
    path = tmp_path / "copy.h5"
    shutil.copyfile(export, path)
    offset, _ = filter_byte_ranges(path)[-1]  # the last chunk of /filters/3x3 (kernels in name order)
    xor_byte(path, offset + 100, 0x10)
    line = one_error_line(run("metrics", "--db", path), path, "Fletcher-32", "export it again")
    assert "wide-" in line
