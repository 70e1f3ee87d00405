"""CPU inference speed and accuracy of each system's saved run: torch eager fp32, torch bf16 (CPU autocast),
ONNX Runtime fp32 and int8 (static QDQ per-channel with real calibration inputs; dynamic), on 1 and 2 threads.

For every setting: items per second at batch 1 (latency: median ms per item too) and batch 8 (throughput),
timed on real inputs, and the metric on real data with its change against torch fp32 (EA-DK: Dice on the
Kvasir-SEG val split at 352x352; GPF-Net: mAP on one CUHK01 split; PGF-Net / GRF: MAE on the CMU-MOSI test
split; BiPVL-Seg: patch Dice). ONNX files come from gpfuse's own exporter (``gpfuse.export.export_onnx``),
are put through ORT's ``ORT_ENABLE_ALL`` optimisations once (saved; timed sessions load the saved file), and
take images as resized (B, H, W, 3) uint8: the normalisation is inside the graph; torch does it per call.
Threads: ``torch.set_num_threads`` / ORT ``intra_op_num_threads``, one inter-op thread. Resizing is outside
every timing. For EA-DK it prints which setting reaches the goal (batch 1: >= 25 images/s on 1 thread and
>= 40 on 2, Dice within 0.5 points of torch fp32) or by how much each falls short.

    cd /work/main && .venv/bin/python benchmarks/inference_speed.py [--systems ea_dk,gpf_net,pgf_net,grf,bipvl]
        [--seconds 2] [--repeats 50] [--limit N] [--markdown FILE] [--gpf-run DIR] [--pgf-run DIR] ...

Run from the repository root (the demo runs' data paths are relative to it). Timings are only meaningful on
an otherwise idle machine. Nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench_utils import peak_rss_mib, print_environment
from gpfuse.utils.files import atomic_write_text
from inference_workloads import SYSTEMS, Workload
from onnx_variants import NUMPY_OF_ONNX, cpu_has, fuse_image_preprocessing, int8_dynamic, int8_static, optimised
from onnx_variants import session as ort_session

SETTINGS = {
    "torch_fp32": "torch eager fp32",
    "torch_bf16": "torch bf16 autocast",
    "ort_fp32": "ORT fp32",
    "ort_int8_static": "ORT int8 static QDQ",
    "ort_int8_dynamic": "ORT int8 dynamic",
}
GOAL_FPS = {1: 25.0, 2: 40.0}  # EA-DK, batch 1, images/s per thread count
GOAL_POINTS = 0.5  # EA-DK: Dice within this many points of torch fp32

Arrays = dict[str, np.ndarray]
Runner = Callable[[Arrays], np.ndarray]


@dataclass
class Row:
    setting: str
    threads: int
    batch: int
    rate: float  # items/s
    ms: float  # median ms per item
    metric: float | None


# ------------------------------------------------------------------------------------------- runners
def torch_runner(w: Workload, bf16: bool) -> Runner:
    model = w.run.model.eval()
    if w.channels_last:
        model = model.to(memory_format=torch.channels_last)

    def run(raw: Arrays) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = getattr(model(w.to_model(raw)), w.output)
        return out.float().numpy()

    return run


def graph_form(w: Workload, raw: Arrays) -> Arrays:
    """``raw`` as the exported (unfused) graph takes it: the torch batch as arrays."""
    return {k: np.ascontiguousarray(v.numpy()) for k, v in w.to_model(raw).items()}


def ort_runner(w: Workload, path: Path, threads: int) -> Runner:
    sess = ort_session(path, threads)
    types = {i.name: NUMPY_OF_ONNX.get(i.type) for i in sess.get_inputs()}

    def run(raw: Arrays) -> np.ndarray:
        given = raw if w.image_norm else graph_form(w, raw)
        missing = sorted(set(types) - set(given))
        if missing:
            raise KeyError(f"{path.name}: ONNX inputs {missing} are not in the batch ({sorted(given)})")
        feeds = {k: given[k] if t is None else given[k].astype(t, copy=False) for k, t in types.items()}
        return sess.run([w.output], feeds)[0]

    return run


def ort_models(w: Workload, tmp: Path, wanted: list[str], reduce_range: bool) -> dict[str, Path]:
    """The optimised ONNX file of each ORT setting in ``wanted`` (those that could be built)."""
    assert w.onnx is not None
    base, out = w.onnx, {}
    calibration = [graph_form(w, b) for b in w.calibration]
    builders = {
        "ort_fp32": lambda: base,
        "ort_int8_static": lambda: int8_static(base, tmp / f"{base.stem}_s8.onnx", calibration, reduce_range),
        "ort_int8_dynamic": lambda: int8_dynamic(base, tmp / f"{base.stem}_d8.onnx", reduce_range),
    }
    for name in wanted:
        if name not in builders:
            continue
        start = time.perf_counter()
        try:
            model = builders[name]()
            if w.image_norm:
                fused = model.with_name(model.stem + "_u8.onnx")
                model = fuse_image_preprocessing(model, fused, "image", *w.image_norm)
            out[name] = optimised(model, model.with_name(model.stem + "_opt.onnx"))
        except Exception as err:  # report the setting as failed, measure the others
            print(f"    {SETTINGS[name]}: could not be built ({type(err).__name__}: {str(err)[:300]})")
            continue
        print(f"    {SETTINGS[name]}: built in {time.perf_counter() - start:.1f} s", flush=True)
    return out


# ------------------------------------------------------------------------------------------- measuring
def chunks(arrays: Arrays, size: int, whole: bool = True) -> list[Arrays]:
    """Consecutive batches of ``size`` items (``whole``: full batches only, or all items if fewer)."""
    n = len(next(iter(arrays.values())))
    end = n - size + 1 if whole else n
    return [{k: v[i : i + size] for k, v in arrays.items()} for i in range(0, max(end, 1), size)]


def timed(run: Runner, batches: list[Arrays], seconds: float, repeats: int) -> tuple[float, float]:
    """(items/s, median ms per item) over up to ``repeats`` calls, stopping once ``seconds`` have passed (at
    least 2 calls), after one warm-up call; the batches are taken in turn."""
    run(batches[0])
    times: list[float] = []
    sizes: list[int] = []
    while len(times) < repeats and (len(times) < 2 or sum(times) < seconds):
        batch = batches[len(times) % len(batches)]
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
        sizes.append(len(next(iter(batch.values()))))
    return sum(sizes) / sum(times), 1000 * statistics.median(t / n for t, n in zip(times, sizes))


def evaluate(run: Runner, w: Workload, batch: int) -> float:
    """The metric of ``run``'s outputs on every evaluation item."""
    return w.score(np.concatenate([run(b) for b in chunks(w.inputs, batch, whole=False)]))


def measure(w: Workload, args: argparse.Namespace, tmp: Path) -> list[Row]:
    wanted = [s for s in args.settings if s.startswith("torch") or w.onnx is not None]
    paths = ort_models(w, tmp, wanted, args.reduce_range) if w.onnx is not None else {}
    rows: list[Row] = []
    top, batches = max(args.threads), w.batches or args.batches
    for setting in wanted:
        if setting.startswith("ort") and setting not in paths:
            continue
        is_torch = setting.startswith("torch")
        runners = {
            t: torch_runner(w, setting == "torch_bf16") if is_torch else ort_runner(w, paths[setting], t)
            for t in args.threads
        }
        torch.set_num_threads(top)
        start = time.perf_counter()
        metric = evaluate(runners[top], w, max(batches))
        print(f"    {SETTINGS[setting]}: {w.metric} {w.scale * metric:.2f} ({time.perf_counter() - start:.1f} s)")
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in batches:
                rate, ms = timed(runners[threads], chunks(w.inputs, batch), args.seconds, args.repeats)
                rows.append(Row(setting, threads, batch, rate, ms, metric))
        del runners
    torch.set_num_threads(top)
    return rows


# ------------------------------------------------------------------------------------------- reporting
def table(w: Workload, rows: list[Row]) -> str:
    ref = next((r.metric for r in rows if r.setting == "torch_fp32"), None)
    unit = w.unit[:-2] if w.unit.endswith("ches") else w.unit[:-1]
    points = "points" if w.scale == 100 else ""
    lines = [
        f"| setting | threads | batch | {w.unit}/s | median ms/{unit} | {w.metric} | change vs torch fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        metric = "-" if r.metric is None else f"{w.scale * r.metric:.2f}"
        change = "-" if r.metric is None or ref is None else f"{w.scale * (r.metric - ref):+.2f} {points}".strip()
        lines.append(
            f"| {SETTINGS[r.setting]} | {r.threads} | {r.batch} | {r.rate:.1f} | {r.ms:.1f} | {metric} | {change} |"
        )
    return "\n".join(lines)


def goal_report(w: Workload, rows: list[Row]) -> str:
    """Per setting: does EA-DK batch 1 reach GOAL_FPS on each thread count with Dice within GOAL_POINTS?"""
    ref = next((r.metric for r in rows if r.setting == "torch_fp32"), None)
    lines = [
        f"Goal (batch 1): >= {GOAL_FPS[1]:g} images/s on 1 thread, >= {GOAL_FPS[2]:g} on 2 threads, Dice within "
        f"{GOAL_POINTS:g} points of torch fp32:"
    ]
    for setting in dict.fromkeys(r.setting for r in rows):
        parts, ok = [], True
        for threads, goal in GOAL_FPS.items():
            row = next((r for r in rows if r.setting == setting and r.threads == threads and r.batch == 1), None)
            if row is None:
                parts.append(f"{threads} thread(s): not measured")
                ok = False
            elif row.rate >= goal:
                parts.append(f"{threads} thread(s) {row.rate:.1f}/s (met)")
            else:
                ok = False
                parts.append(
                    f"{threads} thread(s) {row.rate:.1f}/s (short by {goal - row.rate:.1f}/s, needs "
                    f"{goal / row.rate:.2f}x)"
                )
        metric = next(r.metric for r in rows if r.setting == setting)
        if ref is None or metric is None:
            parts.append("Dice change unknown (no torch fp32 row)")
            ok = False
        else:
            delta = w.scale * (metric - ref)
            fine = abs(delta) <= GOAL_POINTS
            ok &= fine
            parts.append(f"Dice {delta:+.2f} points ({'met' if fine else 'outside ±' + format(GOAL_POINTS, 'g')})")
        lines.append(f"- {SETTINGS[setting]}: {'REACHES the goal' if ok else 'falls short'}: " + "; ".join(parts))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}")
    parser.add_argument(
        "--settings",
        default=None,
        help=f"comma-separated, of {', '.join(SETTINGS)} (default: all; torch_bf16 only on a CPU with native bf16)",
    )
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per timed cell (at least 2 calls)")
    parser.add_argument("--repeats", type=int, default=50, help="at most this many timed calls per cell")
    parser.add_argument("--limit", type=int, default=None, help="at most this many evaluation items per system")
    parser.add_argument("--calibration", type=int, default=32, help="real calibration inputs for static int8")
    parser.add_argument(
        "--reduce-range",
        choices=("auto", "on", "off"),
        default="auto",
        help="7-bit int8 weights (auto: on without AVX-VNNI, where u8s8 products can saturate)",
    )
    parser.add_argument("--size", type=int, default=352, help="EA-DK input side")
    parser.add_argument("--ea-dk-run", default=None, help="default: the newest runs/demo_ea_dk_*/seed_*")
    parser.add_argument("--gpf-run", default=None, help="a trained CUHK01 GPF-Net run (default: ImageNet image-only)")
    parser.add_argument("--gpf-config", default="configs/gpf_net_cuhk01.yaml")
    parser.add_argument("--pgf-run", default=None, help="default: the newest runs/demo_pgf_net_mosi_*/seed_*")
    parser.add_argument("--grf-run", default=None, help="default: the newest runs/demo_grf_mosi_*/seed_*")
    parser.add_argument("--bipvl-run", default=None, help="default: the newest runs/demo_bipvl_seg_*/seed_*")
    parser.add_argument("--bipvl-cases", type=int, default=16, help="volumes (one roi patch each) for BiPVL-Seg")
    parser.add_argument("--kvasir", default="../shared/data/kvasir-seg")
    parser.add_argument("--cuhk01", default="../shared/data/cuhk01")
    parser.add_argument("--markdown", default=None, help="also write the report to this file (atomically)")
    args = parser.parse_args()
    print_environment()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    args.threads = [int(t) for t in args.threads.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    native_bf16 = cpu_has("avx512_bf16", "amx_bf16")
    default_settings = [s for s in SETTINGS if s != "torch_bf16" or native_bf16]
    args.settings = [s.strip() for s in args.settings.split(",")] if args.settings else default_settings
    unknown += [s for s in args.settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown system(s)/setting(s) {unknown}; systems: {list(SYSTEMS)}, settings: {list(SETTINGS)}")
    args.reduce_range = {"on": True, "off": False}.get(args.reduce_range, not cpu_has("avx512_vnni", "avx_vnni"))
    torch.set_num_interop_threads(1)
    import onnxruntime

    header = [
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; threads {args.threads}, batches "
        f"{args.batches}; per cell up to {args.repeats} calls or {args.seconds:g} s; int8 reduce_range "
        f"{args.reduce_range}; static calibration on {args.calibration} real inputs",
    ]
    if "torch_bf16" not in args.settings and not native_bf16:
        header.append(
            "torch bf16 left out: this CPU has no native bf16 (avx512_bf16 / amx_bf16), autocast emulates it at ~10x "
            "the fp32 time; add it with --settings"
        )
    print("\n".join(header), flush=True)
    report = ["# Inference speed", "", *header, ""]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpfuse_infer_") as folder:
        for name in systems:
            tmp = Path(folder) / name
            tmp.mkdir()
            t0 = time.perf_counter()
            print(f"\n== {name}", flush=True)
            try:
                w = SYSTEMS[name](args, tmp)
            except (FileNotFoundError, ValueError, RuntimeError) as err:  # RuntimeError: export verification
                print(f"    skipped: {err}")
                report += [f"## {name}", "", f"skipped: {err}", ""]
                continue
            print(f"    read and exported in {time.perf_counter() - t0:.1f} s", flush=True)
            rows = measure(w, args, tmp)
            text = [f"## {w.system}", "", *[f"- {n}" for n in w.notes], "", table(w, rows)]
            if name == "ea_dk":
                text += ["", goal_report(w, rows)]
            text += ["", f"({time.perf_counter() - t0:.0f} s, peak RSS {peak_rss_mib():.0f} MiB)", ""]
            print("\n" + "\n".join(text), flush=True)
            report += text
    total = f"total {time.perf_counter() - started:.0f} s"
    print(total)
    if args.markdown:
        atomic_write_text(args.markdown, "\n".join([*report, total, ""]))


if __name__ == "__main__":
    main()
