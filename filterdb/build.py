"""The build: load each model of a source, extract its filters, store them; go on past failures.

Models already in the database are skipped unless ``force``, once their shard is found whole
(:func:`plan_build`; a damaged one is extracted again and reported "repaired"); a failure is recorded and
the build continues with the next model. With ``jobs > 1`` worker processes load and
extract in parallel, each writing its own shard; the parent registers finished shards.
The workers die with the parent (``filterdb.workers``).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from filterdb.errors import FilterDBError
from filterdb.outcomes import BuildReport, ModelOutcome
from filterdb.progress import progress_bar
from filterdb.records import extract_loaded
from filterdb.shards import SHARD_DIR, write_shard
from filterdb.sources.base import LoadedModel, ModelSpec
from filterdb.store import FilterDB
from filterdb.strays import remove_dead_temps
from filterdb.workers import worker_pool


def add_module(db: FilterDB, module, *, source: str, name: str, input_shape: tuple[int, int, int],
               record: dict | None = None, weights_path: str | os.PathLike | None = None) -> str:
    """Extract a ``torch.nn.Module`` (or a list: the members of an ensemble) into ``db``; returns its model_id."""
    members = module if isinstance(module, list) else [module]
    spec = ModelSpec(source, name, record=dict(record or {}))
    c, h, w = input_shape
    loaded = LoadedModel(spec, members, (c, h, w), Path(weights_path) if weights_path else None)
    return db.add_extracted(*extract_loaded(loaded))


def describe_error(exc: BaseException, spec: ModelSpec | None = None) -> str:
    """One line naming the model (unless the message already does) and what went wrong."""
    text = str(exc) if isinstance(exc, FilterDBError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    if spec is None or spec.label in text or spec.name in text:
        return text
    return f"{spec.label}: {text}"


def load_spec(spec: ModelSpec) -> LoadedModel:
    if spec.load is None:
        raise FilterDBError(f"{spec.key}: its source gave no loader")
    return spec.load(spec)


def ingest_to_shard(db_dir: str, spec: ModelSpec) -> tuple[str, int, int]:
    """Worker task: load, extract and write one model's shard. Returns (model_id, layers, filters)."""
    loaded = load_spec(spec)
    record, layers = extract_loaded(loaded)
    write_shard(Path(db_dir), record, layers)
    if loaded.cleanup:
        loaded.cleanup()
    return record["model_id"], record["n_layers"], record["n_filters"]


def plan_build(db: FilterDB, specs: list[ModelSpec], force: bool = False, verify: bool = False
               ) -> tuple[BuildReport, list[ModelSpec]]:
    """A report holding the models already in ``db`` whose shard is whole as skipped (none with ``force``),
    and the specs left to do: those not in ``db`` and those whose shard is damaged (in ``report.damaged``).

    Whole means, by default, its size, model id and recorded digest what the master's index records (the
    shard's root attributes; the writer's open has read the tables of every shard changed since the master);
    no filter byte is read, so a change inside the filter data is not seen here. ``verify``: the shard read
    whole, its tables and every layer's filters checked against their digests (``FilterDB.shard_problems``)."""
    report = BuildReport()
    present = [spec for spec in specs if not force and db.has_model(spec.model_id)]
    report.damaged = db.shard_problems([spec.model_id for spec in present], full=verify) if present else {}
    skipped = {spec.model_id for spec in present} - set(report.damaged)
    todo = []
    for spec in specs:
        if spec.model_id in skipped:
            report.outcomes.append(ModelOutcome(spec.key, spec.model_id, "skipped"))
        else:
            todo.append(spec)
    return report, todo


def build(db: FilterDB, specs: list[ModelSpec], *, force: bool = False, jobs: int = 1,
          show_progress: bool = True, description: str = "models", verify: bool = False) -> BuildReport:
    """Add every spec's model to ``db`` (or extract it again where its shard is damaged, :func:`plan_build`);
    returns what happened to each."""
    report, todo = plan_build(db, specs, force, verify)
    t_start = time.perf_counter()

    def stored() -> str:
        """Filters stored so far in this build, their size and rate."""
        n = sum(o.n_filters for o in report.outcomes if o.status == "added")
        rate = n / max(time.perf_counter() - t_start, 1e-9)
        return f"{n / 1e6:.2f}M filters stored, {rate / 1e6:.2f}M filters/s"

    with db.batch(), progress_bar(unit="models", transient=not show_progress) as progress:
        task = progress.add_task(description, total=len(todo), status="", visible=show_progress)
        if jobs <= 1:
            with ThreadPoolExecutor(max_workers=1) as prefetcher:
                for spec, following in zip(todo, [*todo[1:], None]):
                    prefetch = getattr(following.load, "prefetch", None) if following is not None else None
                    if prefetch is not None:
                        prefetcher.submit(prefetch, following)  # download while this one extracts
                    progress.update(task, status=f"{stored()} | {spec.name}")
                    report.outcomes.append(_ingest_here(db, spec))
                    progress.advance(task)
        else:
            _ingest_parallel(db, todo, jobs, report, lambda name: (progress.update(task, status=f"{stored()} | {name}"),
                                                                 progress.advance(task)))
        failed = report.count("failed")
        progress.update(task, status=f"{stored()} | " + (f"{failed} failed" if failed else "done"))
    report.mark_repaired()
    return report


def _ingest_here(db: FilterDB, spec: ModelSpec) -> ModelOutcome:
    t0 = time.perf_counter()
    try:
        loaded = load_spec(spec)
        record, layers = extract_loaded(loaded)
        db.add_extracted(record, layers)
        if loaded.cleanup:
            loaded.cleanup()
    except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the build
        return ModelOutcome(spec.key, spec.model_id, "failed", seconds=time.perf_counter() - t0,
                            error=describe_error(exc, spec))
    return ModelOutcome(spec.key, spec.model_id, "added", record["n_layers"], record["n_filters"],
                        time.perf_counter() - t0)


def _ingest_parallel(db: FilterDB, todo: list[ModelSpec], jobs: int, report: BuildReport, on_done) -> None:
    started: dict[Future, tuple[ModelSpec, float]] = {}
    lock = db._lock.fileno() if db._lock is not None else None
    try:
        _run_pool(db, todo, jobs, report, on_done, started, lock)
    finally:  # workers that died (killed, out of memory) leave their temporary shards: remove them
        remove_dead_temps(db.path / SHARD_DIR)


def _run_pool(db: FilterDB, todo: list[ModelSpec], jobs: int, report: BuildReport, on_done, started, lock) -> None:
    with worker_pool(jobs, (lock,) if lock is not None else ()) as pool:
        for spec in todo:
            started[pool.submit(ingest_to_shard, os.fspath(db.path), spec)] = (spec, time.perf_counter())
        pending = set(started)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                spec, t0 = started[future]
                try:
                    mid, n_layers, n_filters = future.result()
                    db.adopt_shard(mid)
                    outcome = ModelOutcome(spec.key, mid, "added", n_layers, n_filters, time.perf_counter() - t0)
                except Exception as exc:  # noqa: BLE001
                    outcome = ModelOutcome(spec.key, spec.model_id, "failed", seconds=time.perf_counter() - t0,
                                           error=describe_error(exc, spec))
                report.outcomes.append(outcome)
                on_done(spec.name)
