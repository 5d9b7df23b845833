"""The build on a Dask cluster: ``filterdb build ... --scheduler tcp://HOST:8786``.

Each Dask worker runs ``ingest_to_shard``: it loads one model, extracts its filters and
writes that model's shard into the database directory, which must therefore be on a
filesystem every worker sees (and the weights cache too). The client registers shards
as they finish, so an interrupted distributed build keeps every finished model and a
rerun resumes, exactly as a local build does.
"""
from __future__ import annotations

import os
import time

from filterdb.build import BuildReport, ModelOutcome, describe_error, ingest_to_shard, plan_build
from filterdb.errors import FilterDBError
from filterdb.progress import progress_bar
from filterdb.sources.base import ModelSpec
from filterdb.store import FilterDB


def timed_ingest(db_dir: str, spec: ModelSpec) -> tuple[str, int, int, float]:
    """Worker task: ``ingest_to_shard`` plus the seconds it took on the worker."""
    t0 = time.perf_counter()
    mid, n_layers, n_filters = ingest_to_shard(db_dir, spec)
    return mid, n_layers, n_filters, time.perf_counter() - t0


def build_on_dask(db: FilterDB, specs: list[ModelSpec], scheduler_address: str, *, force: bool = False,
                  show_progress: bool = True) -> BuildReport:
    """Add every spec's model to ``db`` using the workers of the Dask scheduler at ``scheduler_address``."""
    from dask.distributed import Client, as_completed

    report, todo = plan_build(db, specs, force)
    if not todo:
        return report
    try:
        client = Client(scheduler_address, timeout="20s")
    except OSError as exc:
        raise FilterDBError(f"cannot reach the Dask scheduler at {scheduler_address} ({exc}); "
                            "check the address (e.g. tcp://HOST:8786) and that the scheduler runs") from exc
    with client, db.batch(), progress_bar(unit="models", transient=not show_progress) as progress:
        task = progress.add_task(f"dask {scheduler_address}", total=len(todo), status="", visible=show_progress)
        futures = {client.submit(timed_ingest, os.fspath(db.path), spec, key=f"filterdb-{spec.model_id}-{i}",
                                 pure=False, retries=0): spec for i, spec in enumerate(todo)}
        for future in as_completed(futures):
            spec = futures[future]
            try:
                mid, n_layers, n_filters, seconds = future.result()
                db.adopt_shard(mid)
                outcome = ModelOutcome(spec.key, mid, "added", n_layers, n_filters, seconds)
            except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the build
                outcome = ModelOutcome(spec.key, spec.model_id, "failed", error=describe_error(exc, spec))
            report.outcomes.append(outcome)
            progress.update(task, status=spec.name)
            progress.advance(task)
            future.release()
    return report
