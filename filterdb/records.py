"""The model-table row of an extracted model: what its source knows plus what extraction measured."""
from __future__ import annotations

import datetime as _dt
import json
from typing import TYPE_CHECKING

from filterdb import schema
from filterdb.admission import check_admissible
from filterdb.ids import model_id as make_model_id
from filterdb.ids import model_key
from filterdb.integrity import sha256_file
from filterdb.sources.base import LoadedModel
from filterdb.versions import TOOL_VERSION

if TYPE_CHECKING:
    from filterdb.extract import ExtractedLayer


def model_record(source: str, name: str, layers: list[ExtractedLayer], record: dict, *, n_params: int,
                 n_members: int, input_shape: tuple[int, ...], weights_sha256: str = "") -> dict:
    """The model-table row for an extracted model: what the source knows plus what extraction measured."""
    row = dict(record)
    row.update(
        model_id=make_model_id(source, name), key=model_key(source, name), source=source, name=name,
        n_params=int(n_params), n_members=int(n_members), input_shape="x".join(str(int(s)) for s in input_shape),
        n_layers=len(layers), n_filters=int(sum(layer.info["n_filters"] for layer in layers)),
        weights_sha256=weights_sha256 or row.get("weights_sha256", ""), tool_version=TOOL_VERSION,
        extracted_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    return schema.complete_record(row, schema.MODEL_COLUMNS, "model")



def extract_loaded(loaded: LoadedModel) -> tuple[dict, list[ExtractedLayer]]:
    """A loaded model's complete model-table row and its extracted layers (``write_shard`` checks their values)."""
    spec = loaded.spec
    sha = spec.record.get("weights_sha256") or (sha256_file(loaded.weights_path) if loaded.weights_path else "")
    if loaded.layers is not None:  # read without a network: write_shard checks the values
        known = {**spec.record, **loaded.record}
        return model_record(spec.source, spec.name, loaded.layers, known, n_params=loaded.n_params, n_members=1,
                            input_shape=loaded.input_shape, weights_sha256=sha), loaded.layers
    from filterdb.extract import extract_members, skipped_convs

    check_admissible(loaded.members, loaded.input_shape, spec.label)
    layers = extract_members(loaded.members, loaded.input_shape, model_name=spec.label, check_values=False)
    n_params = sum(p.numel() for m in loaded.members for p in m.parameters())
    skipped = [{"member": i, **entry} for i, m in enumerate(loaded.members) for entry in skipped_convs(m)]
    known = {**spec.record, **loaded.record, "skipped_convs": json.dumps(skipped) if skipped else ""}
    record = model_record(spec.source, spec.name, layers, known, n_params=n_params,
                          n_members=len(loaded.members), input_shape=loaded.input_shape, weights_sha256=sha)
    return record, layers
