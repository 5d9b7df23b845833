"""Sweep the model zoos: every convolution of each architecture lands, and its stored filters are right.

For each RobustBench id (built by RobustBench's own constructor with random weights:
``filterdb.training.create_model("robustbench:ID")``) and each timm architecture
(``pretrained=False``), offline: store it in a real database (``FilterDB.add_module``),
then check every stored layer with ``tests/conv_reproduction.py`` (hooks capture each
convolution's input and output on a probe forward; ``F.conv2d`` with the filters read
back from the database must reproduce the output). A model lands when it is stored,
every reached layer reproduces within ``--tolerance``, and no module but the stored
layers and those in ``skipped_convs`` convolves with learned weights on the probe pass
(``unaccounted_convolutions``). One line per model to stdout, the failures (one line
each) and counts at the end, a CSV with ``--csv`` (a row written
as each model ends); exit status 1 if any model did not land. Each model is removed from
the database once checked (disk).

Each model runs in a forked child process, with a database of its own: a model whose
resident memory passes ``--max-memory-gb`` or that runs past ``--model-timeout`` is
killed and recorded as ``skipped`` (with why and its peak memory), never a crash of the
sweep or of the machine. ``--skip-csv`` skips the names a previous run's CSV holds
(the same file as ``--csv`` keeps its rows and appends), ``--start N`` the first N.

    python bench/sweep_zoo.py --timm --robustbench --budget 3000 --csv sweep.csv
    python bench/sweep_zoo.py --robustbench --budget 3000 --csv sweep.csv --skip-csv sweep.csv  # go on

``--timm-all`` goes on past TIMM to every timm architecture, one per timm model module
first. RobustBench ids are taken one per (dataset, architecture) first, then the rest, so a
time budget covers the most architectures; ids whose constructor downloads weights or
needs CUDA fail with their constructor's error, as a user would see it.
"""
from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conv_reproduction import reproduction_errors, unaccounted_convolutions  # noqa: E402

from filterdb.build import add_module  # noqa: E402
from filterdb.errors import FilterDBError  # noqa: E402
from filterdb.store import FilterDB  # noqa: E402

TIMM = """
resnetv2_50x1_bit nf_resnet26 nfnet_l0 eca_nfnet_l0 dm_nfnet_f0 nf_regnet_b0 vit_tiny_r_s16_p8_224
vit_small_r26_s32_224 efficientnet_cc_b0_4e tf_efficientnet_b0 tf_mixnet_s tf_efficientnetv2_b0
tf_mobilenetv3_small_minimal_100 maxvit_rmlp_nano_rw_256 halonet26t botnet26t_256
resnet18 resnet50d resnext26ts seresnext26d_32x4d resnetrs50 resnetv2_50 densenet121 dla34 dpn48b vgg11_bn
inception_v3 xception41 efficientnet_b0 efficientnetv2_rw_t mixnet_s mnasnet_100 mobilenetv2_100
mobilenetv3_small_100 lcnet_050 ghostnet_100 ghostnetv2_100 fbnetv3_b hardcorenas_a regnetx_002 regnety_002
regnetz_b16 rexnet_100 convnext_atto convnextv2_atto cspresnet50 cs3darknet_s hrnet_w18_small
res2net50_14w_8s resnest14d skresnet18 selecsls42b gernet_s repvgg_a0 mobileone_s0 fastvit_t8
efficientformer_l1 efficientformerv2_s0 levit_128s mobilevit_xxs mobilevitv2_050 edgenext_xx_small
poolformer_s12 coat_lite_tiny coat_tiny crossvit_tiny_240 vit_tiny_patch16_224 deit_tiny_patch16_224
swin_tiny_patch4_window7_224 swinv2_cr_tiny_ns_224 maxvit_nano_rw_256 coatnet_nano_rw_224 lambda_resnet26t
sebotnet33ts_256 eca_halonext26ts xcit_nano_12_p16_224 pit_ti_224 pvt_v2_b0 mvitv2_tiny focalnet_tiny_srf
gcvit_xxtiny davit_tiny nest_tiny resmlp_12_224 mixer_s16_224 gmlp_ti16_224 cait_xxs24_224 convit_tiny
visformer_tiny inception_next_tiny hgnet_tiny hgnetv2_b0 ese_vovnet19b_dw dla60x_c bat_resnext26ts tinynet_e
efficientvit_b0 efficientvit_m0 eva02_tiny_patch14_224 hiera_tiny_224 tiny_vit_5m_224 repghostnet_050
nfnet_f0 nf_ecaresnet26 cspdarknet53 inception_resnet_v2 wide_resnet50_2 tresnet_m volo_d1_224
tnt_s_patch16_224 sequencer2d_s
""".split()


def timm_model(name: str):
    import timm

    model = timm.create_model(name, pretrained=False)
    return [model], tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))


def timm_order() -> list[str]:
    """Every timm architecture: TIMM's first, then one per timm model module that TIMM misses, then the rest."""
    import timm

    first = list(TIMM)
    for module in timm.list_modules():
        names = timm.list_models(module=module)
        if names and not set(names) & set(first):
            first.append(names[0])
    return first + [n for n in timm.list_models() if n not in set(first)]


def robustbench_model(model_id: str):
    from filterdb.sources.robustbench import ensemble_members, input_shape, zoo_entry
    from filterdb.training import create_model

    dataset, threat, name = model_id.split("/")
    return ensemble_members(create_model("robustbench:" + model_id)), input_shape(dataset, zoo_entry(dataset, threat, name))


def robustbench_order() -> list[str]:
    """All RobustBench ids, one per (dataset, architecture) first."""
    from filterdb.sources.robustbench import model_table
    from filterdb.training.models import robustbench_ids

    ids = robustbench_ids.list_ids()
    table = model_table()
    arch = {f"{r.dataset}/{r.threat_model}/{r.name}": (r.dataset, r.architecture) for r in table.itertuples()}
    first, rest, seen = [], [], set()
    for model_id in ids:
        key = arch.get(model_id, (model_id, model_id))
        (rest if key in seen else first).append(model_id)
        seen.add(key)
    return first + rest


COLUMNS = ["source", "name", "status", "layers", "kinds", "skipped_convs", "unreached", "worst_error", "seconds",
           "peak_gb", "error"]


def new_row(source: str, name: str) -> dict:
    return {"source": source, "name": name, "status": "failed", "layers": 0, "kinds": "", "skipped_convs": 0,
            "unreached": 0, "worst_error": float("nan"), "seconds": 0.0, "peak_gb": 0.0, "error": ""}


def sweep_one(db: FilterDB, source: str, name: str, tolerance: float) -> dict:
    t0 = time.perf_counter()
    row = new_row(source, name)
    try:
        torch.manual_seed(0)
        members, input_shape = (timm_model if source == "timm" else robustbench_model)(name)
        model_id = add_module(db, members, source=source, name=name, input_shape=input_shape)
        layers = db.layers[db.layers["model_id"] == model_id]
        model = db.models.loc[model_id]
        row.update(layers=len(layers), unreached=int((~layers["reached"].astype(bool)).sum()),
                   kinds=" ".join(f"{k}={n}" for k, n in layers["weight_kind"].value_counts().items()),
                   skipped_convs=len(json.loads(model["skipped_convs"])) if model["skipped_convs"] else 0)
        errors = reproduction_errors(db, model_id, members, input_shape)
        skipped = json.loads(model["skipped_convs"]) if model["skipped_convs"] else []
        accounted = {(int(r.member), r.name.partition(":expert")[0]) for r in layers.itertuples()} | \
                    {(int(s["member"]), s["name"]) for s in skipped}
        unaccounted = unaccounted_convolutions(members, input_shape, accounted)
        db.remove_model(model_id)
        row["worst_error"] = max(errors.values(), default=float("nan"))
        bad = {k: e for k, e in errors.items() if not e <= tolerance}
        reached_names = {(int(r.member), r.name.partition(":expert")[0]) for r in layers.itertuples() if r.reached}
        missing = reached_names - set(errors)
        if bad:
            (member, layer), error = max(bad.items(), key=lambda kv: kv[1])
            row["error"] = f"{len(bad)} layer(s) do not reproduce, worst {layer} (member {member}): {error:.3g}"
        elif missing:
            row["error"] = f"{len(missing)} reached layer(s) not called in the probe pass, e.g. {sorted(missing)[0]}"
        elif unaccounted:
            row["error"] = (f"{len(unaccounted)} module(s) convolve with learned weights but are neither stored nor "
                            f"in skipped_convs, e.g. {unaccounted[0]}")
        else:
            row["status"] = "landed"
    except FilterDBError as exc:
        row["error"] = " ".join(str(exc).split())[:300]
    except Exception as exc:  # noqa: BLE001 - the sweep reports every model's failure and goes on
        row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _child(db_dir: str, source: str, name: str, tolerance: float, conn) -> None:
    with FilterDB.open(db_dir, "a") as db:
        conn.send(sweep_one(db, source, name, tolerance))


def sweep_isolated(tmp: Path, source: str, name: str, tolerance: float, max_gb: float, timeout: float) -> dict:
    """``sweep_one`` in a forked child with its own database; killed (row 'skipped') past ``max_gb``
    resident memory or ``timeout`` seconds. ``peak_gb``: the largest resident size seen (sampled)."""
    db_dir = tmp / "db"
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_child, args=(db_dir, source, name, tolerance, sender))
    t0 = time.perf_counter()
    child.start()
    sender.close()
    process, peak, why, row = psutil.Process(child.pid), 0, "", None
    while row is None and not why:
        if receiver.poll(0.2):
            try:
                row = receiver.recv()
            except EOFError:  # the child died without a row
                child.join()
                why = f"the child process died (exit status {child.exitcode})"
            break
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
        if peak > max_gb * 2**30:
            why = f"memory: over {max_gb:g} GB resident, killed"
        elif time.perf_counter() - t0 > timeout:
            why = f"time: over {timeout:g} s, killed"
        elif not child.is_alive() and not receiver.poll(0):
            why = f"the child process died (exit status {child.exitcode})"
    if child.is_alive() and row is None:
        child.kill()
    child.join()
    shutil.rmtree(db_dir, ignore_errors=True)
    if row is None:
        row = new_row(source, name)
        row.update(status="skipped" if why.startswith(("memory", "time")) else "failed", error=why,
                   seconds=round(time.perf_counter() - t0, 2))
    row["peak_gb"] = round(peak / 2**30, 2)
    return row


def time_order_pass(name: str, repeat: int = 3) -> None:
    """Seconds of the execution-order pass of a timm model, shapes-only vs complete (medians, alternated)."""
    import statistics

    from filterdb.extract import _hooked_pass, conv_modules

    (model,), input_shape = timm_model(name)
    convs = [m for _, m in conv_modules(model)]
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeat):
        for shapes_only in (True, False):
            t0 = time.perf_counter()
            _hooked_pass(model, convs, input_shape, shapes_only=shapes_only)
            times[shapes_only].append(time.perf_counter() - t0)
    fast, full = statistics.median(times[True]), statistics.median(times[False])
    print(f"{name} {input_shape}: order pass shapes-only {fast:.2f} s, complete {full:.2f} s ({full / fast:.1f}x)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timm", action="store_true", help="Sweep the timm architectures listed in TIMM.")
    parser.add_argument("--timm-all", action="store_true",
                        help="Sweep every timm architecture: TIMM's, then one per timm module TIMM misses, then the rest.")
    parser.add_argument("--robustbench", action="store_true", help="Sweep RobustBench's ids.")
    parser.add_argument("--only", nargs="*", default=None, help="Only these names (timm names or RobustBench ids).")
    parser.add_argument("--budget", type=float, default=float("inf"), help="Stop starting models after SECONDS.")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="Max relative output error of a layer.")
    parser.add_argument("--csv", type=Path, default=None, help="Write one row per model here.")
    parser.add_argument("--skip-csv", type=Path, nargs="*", default=[],
                        help="Skip the names these CSVs of earlier runs hold (the --csv file itself: append to it).")
    parser.add_argument("--start", type=int, default=0, help="Skip the first N models of the list.")
    parser.add_argument("--max-memory-gb", type=float, default=10.0,
                        help="Kill a model past this resident memory (row 'skipped').")
    parser.add_argument("--model-timeout", type=float, default=1200.0,
                        help="Kill a model running past SECONDS (row 'skipped').")
    parser.add_argument("--order-pass", nargs="*", default=None, metavar="TIMM_NAME",
                        help="Only time the execution-order pass of these timm models, shapes-only vs complete.")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.order_pass is not None:
        for name in args.order_pass or ["nfnet_f0"]:
            time_order_pass(name)
        return 0
    timm_names = timm_order() if args.timm_all else TIMM if args.timm else []
    todo = [("timm", n) for n in timm_names] + \
           ([("robustbench", i) for i in robustbench_order()] if args.robustbench else [])
    if args.only:
        todo = [(s, n) for s, n in todo if n in args.only] or [("timm" if "/" not in n else "robustbench", n)
                                                                for n in args.only]
    earlier = [row for path in args.skip_csv if path.exists() for row in csv.DictReader(open(path, newline=""))]
    done = {r["name"] for r in earlier}
    todo = [(s, n) for s, n in todo[args.start:] if n not in done]
    csv_file = open(args.csv, "w", newline="") if args.csv else None  # noqa: SIM115 - open for the whole sweep
    writer = csv.DictWriter(csv_file, fieldnames=COLUMNS, restval="") if csv_file else None
    if writer:
        writer.writeheader()
        keep = [p for p in args.skip_csv if p.resolve() == args.csv.resolve()]
        writer.writerows(r for r in earlier if keep)  # appending to the CSV of the earlier run
    if args.timm or args.timm_all:  # imported once here, not in every child
        import timm  # noqa: F401
    if args.robustbench:
        from filterdb.compat import import_robustbench
        from filterdb.training import create_model  # noqa: F401

        import_robustbench()
    rows, t_start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sweep-db-") as tmp:
        for source, name in todo:
            if time.perf_counter() - t_start > args.budget:
                break
            row = sweep_isolated(Path(tmp), source, name, args.tolerance, args.max_memory_gb, args.model_timeout)
            rows.append(row)
            print(f"{row['status']:7} {source}:{name} layers={row['layers']} {row['kinds']} "
                  f"skipped_convs={row['skipped_convs']} unreached={row['unreached']} "
                  f"worst={row['worst_error']:.2g} {row['seconds']}s {row['peak_gb']}GB {row['error']}", flush=True)
            if writer:
                writer.writerow(row)
                csv_file.flush()
    if csv_file:
        csv_file.close()
    failed = [r for r in rows if r["status"] != "landed"]
    for source in ("timm", "robustbench"):
        mine = [r for r in rows if r["source"] == source]
        if mine:
            print(f"{source}: {sum(r['status'] == 'landed' for r in mine)}/{len(mine)} landed, "
                  f"{sum(r['status'] == 'skipped' for r in mine)} skipped "
                  f"(of {sum(s == source for s, _ in todo)} to do; {len(done)} done before)")
    for r in failed:
        print(f"{r['status'].upper()} {r['source']}:{r['name']}: {r['error']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
