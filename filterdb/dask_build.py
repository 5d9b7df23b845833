"""The build on a Dask cluster: ``filterdb build ... --scheduler tcp://HOST:8786``.

Each Dask worker runs ``ingest_to_shard``: it loads one model, extracts its filters and
writes that model's shard into the database directory, which must therefore be on a
filesystem every worker sees (and the weights cache too). The client registers shards
as they finish, so an interrupted distributed build keeps every finished model and a
rerun resumes, exactly as a local build does.

A cluster that cannot make progress is not waited on forever: when the scheduler has had no
worker, or could not be reached, for :func:`lost_cluster_timeout` seconds
(``$FILTERDB_DASK_TIMEOUT``, default 120), the build stops with one line saying which, keeps
every model already committed (the master is published) and exits non-zero; a rerun resumes.
"""
from __future__ import annotations

import os
import time

from filterdb.build import describe_error, ingest_to_shard, plan_build
from filterdb.errors import FilterDBError
from filterdb.outcomes import BuildReport, ModelOutcome
from filterdb.progress import progress_bar
from filterdb.shards import SHARD_DIR
from filterdb.sources.base import ModelSpec
from filterdb.store import FilterDB
from filterdb.strays import remove_dead_temps

POLL_SECONDS = 1.0


def lost_cluster_timeout() -> float:
    """Seconds without a worker or without the scheduler before a distributed build gives up."""
    return float(os.environ.get("FILTERDB_DASK_TIMEOUT", "120"))


def timed_ingest(db_dir: str, spec: ModelSpec) -> tuple[str, int, int, float]:
    """Worker task: ``ingest_to_shard`` plus the seconds it took on the worker."""
    t0 = time.perf_counter()
    mid, n_layers, n_filters = ingest_to_shard(db_dir, spec)
    return mid, n_layers, n_filters, time.perf_counter() - t0


def build_on_dask(db: FilterDB, specs: list[ModelSpec], scheduler_address: str, *, force: bool = False,
                  show_progress: bool = True, verify: bool = False) -> BuildReport:
    """Add every spec's model to ``db`` using the workers of the Dask scheduler at ``scheduler_address``."""
    from dask.distributed import Client

    report, todo = plan_build(db, specs, force, verify)
    if not todo:
        return report
    try:
        client = Client(scheduler_address, timeout="20s")
    except OSError as exc:
        raise FilterDBError(f"cannot reach the Dask scheduler at {scheduler_address} ({exc}); "
                            "check the address (e.g. tcp://HOST:8786) and that the scheduler runs") from exc
    try:
        with db.batch(), progress_bar(unit="models", transient=not show_progress) as progress:
            task = progress.add_task(f"dask {scheduler_address}", total=len(todo), status="", visible=show_progress)
            futures = {client.submit(timed_ingest, os.fspath(db.path), spec, key=f"filterdb-{spec.model_id}-{i}",
                                     pure=False, retries=0): spec for i, spec in enumerate(todo)}
            for future in _as_completed_or_lost(client, scheduler_address, futures, report):
                spec = futures[future]
                _record(db, future, spec, report)
                progress.update(task, status=spec.name)
                progress.advance(task)
                future.release()
    finally:
        try:
            client.close(timeout=5)
        except Exception:  # noqa: BLE001 - a lost scheduler cannot be told goodbye
            pass
        remove_dead_temps(db.path / SHARD_DIR)  # the temporary shards of workers that were killed
    report.mark_repaired()
    return report


def _record(db: FilterDB, future, spec: ModelSpec, report: BuildReport) -> None:
    try:
        mid, n_layers, n_filters, seconds = future.result()
        db.adopt_shard(mid)
        outcome = ModelOutcome(spec.key, mid, "added", n_layers, n_filters, seconds)
    except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the build
        outcome = ModelOutcome(spec.key, spec.model_id, "failed", error=describe_error(exc, spec))
    report.outcomes.append(outcome)


def _as_completed_or_lost(client, address: str, futures: dict, report: BuildReport):
    """Yield futures as they finish; raise ``FilterDBError`` once the cluster has had no worker, or the
    scheduler has been unreachable, for ``lost_cluster_timeout()`` seconds."""
    from dask.distributed import wait

    timeout = lost_cluster_timeout()
    pending = set(futures)
    healthy_at = time.monotonic()
    def lost(what: str, waited: float) -> FilterDBError:
        done_models = sum(o.status == "added" for o in report.outcomes)
        return FilterDBError(f"Dask build at {address}: {what}{f' for {waited:.0f} s' if waited else ''}, "
                             f"{len(pending)} model(s) not built; the {done_models} model(s) committed are kept - "
                             "restart the cluster and rerun the same command to resume ($FILTERDB_DASK_TIMEOUT "
                             "sets the wait)")

    while pending:
        try:
            done, pending = wait(pending, timeout=POLL_SECONDS, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = set()
        except Exception:  # noqa: BLE001 - FuturesCancelledError: the scheduler went away with the tasks
            raise lost("the scheduler was lost and cancelled the tasks", 0) from None
        if any(f.status == "cancelled" for f in done):
            pending |= {f for f in done if f.status == "cancelled"}
            raise lost("the scheduler was lost and cancelled the tasks", 0)
        yield from done
        if done:
            healthy_at = time.monotonic()
            continue
        try:
            problem = "" if client.status == "running" and client.nthreads() else "no worker"
        except Exception:  # noqa: BLE001 - comm errors of a lost scheduler
            problem = "no scheduler"
        if client.status not in ("running", "connecting"):
            problem = "no scheduler"
        if not problem:
            healthy_at = time.monotonic()
        elif time.monotonic() - healthy_at >= timeout:
            raise lost("the scheduler has been unreachable" if problem == "no scheduler" else
                       "the cluster has had no worker", timeout)
