"""Where EA-DK's inference time goes: per module of Fig. 1, milliseconds (torch eager, batch 1, forward hooks)
and FLOPs (torch's FlopCounterMode), then the whole model's speed per engine as a fraction of the core's peak.

Modules, top to bottom: the encoder's stages (EfficientNet-Lite0: the stem at stride 2, then its blocks up to
strides 4, 8, 16, 32), UCA of each stage, encoder attention, the dynamic-kernel MLP, the deepest block, each
decoder stage (by its output stride), each kernel update, and the rest measured as the whole forward minus the
modules: the prediction heads (the per-sample 1x1 kernels), region descriptors and the final upsampling.

Peak: the GFLOP/s of a large fp32 matrix product (torch, the same threads) measured in the same run, a
practical ceiling for this core; each engine's fraction is model GFLOPs x frames/s / that peak.

    python benchmarks/ea_dk_profile.py [--size 352] [--threads 1] [--repeats 30] [--set decoder_stride=4 ...]
        [--engines torch,onnxruntime,openvino] [--markdown FILE]

Model options (``--set key=value``, EADK's keywords) profile a cheaper configuration, e.g. the real-time config's;
today's EA-DK (the defaults) is then timed in torch eager in the same run too, and every engine's speed is also
given as a ratio to it (the issue's "at least 4x eager torch fp32 of today's EA-DK, same size, same run").
Timings mean something only on an otherwise idle machine; the machine's description is printed first.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench_utils import print_environment
from gpfuse.models import create_model


def module_groups(model: nn.Module) -> dict[str, list[str]]:
    """Label -> the dotted names of the modules it times, in the order of Fig. 1."""
    encoder = model.encoder
    groups: dict[str, list[str]] = {}
    if hasattr(encoder, "stage_ends"):  # EfficientNet-Lite0: the stem, then blocks per stage
        groups["encoder stem (stride 2)"] = ["encoder._conv_stem", "encoder._bn0"]
        start = 0
        for stride, end in zip((4, 8, 16, 32), encoder.stage_ends, strict=True):
            groups[f"encoder blocks to stride {stride}"] = [f"encoder._blocks.{i}" for i in range(start, end)]
            start = end
    else:
        groups["encoder"] = ["encoder"]
    strides = model.stage_strides
    for i, stride in enumerate(strides):
        groups[f"UCA stride {stride}"] = [f"uca.{i}"]
    groups["encoder attention"] = ["encoder_attention"]
    groups["dynamic-kernel MLP"] = ["dynamic_kernel"]
    groups[f"deepest block (stride {strides[-1]})"] = ["deepest", "deepest_unify"]
    for i, stride in enumerate(model.decoder_strides):
        groups[f"decoder stage to stride {stride}"] = [f"decoder.{i}"]
        groups[f"kernel update at stride {stride}"] = [f"kernel_updates.{i}"]
    return groups


def _timed_hooks(model: nn.Module, groups: dict[str, list[str]]) -> tuple[dict[str, list[float]], list]:
    """Forward hooks adding each group's wall seconds of one forward pass to ``spent[label][-1]``."""
    spent: dict[str, list[float]] = defaultdict(lambda: [0.0])
    modules = dict(model.named_modules())
    handles, starts = [], {}
    for label, names in groups.items():
        for name in names:
            module = modules[name]

            def pre(_m, _x, key=(label, name)):
                starts[key] = time.perf_counter()

            def post(_m, _x, _y, key=(label, name)):
                spent[key[0]][-1] += time.perf_counter() - starts[key]

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return spent, handles


def _flops(model: nn.Module, x: torch.Tensor, groups: dict[str, list[str]]) -> tuple[dict[str, float], float]:
    counter = FlopCounterMode(display=False)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused eval kernels are invisible to the counter
    try:
        with torch.no_grad(), counter:
            model({"image": x})
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    per_group = {
        label: sum(sum(counts.get(f"{root}.{n}", {}).values()) for n in names) / 1e9 for label, names in groups.items()
    }
    return per_group, counter.get_total_flops() / 1e9


def profile(model: nn.Module, size: int, repeats: int) -> tuple[list[tuple[str, float, float]], float, float]:
    """Rows (label, median ms, GFLOPs), the whole forward's median ms and GFLOPs."""
    x = torch.randn(1, 3, size, size)
    groups = module_groups(model)
    gflops, total_gflops = _flops(model, x, groups)
    spent, handles = _timed_hooks(model, groups)
    totals = []
    with torch.no_grad():
        model({"image": x})  # warm-up
        for _ in range(repeats):
            for v in spent.values():
                v.append(0.0)
            start = time.perf_counter()
            model({"image": x})
            totals.append(time.perf_counter() - start)
    for h in handles:
        h.remove()
    rows = [(label, 1000 * statistics.median(spent[label][2:]), gflops[label]) for label in groups]
    total_ms = 1000 * statistics.median(totals)
    rest_ms = total_ms - sum(r[1] for r in rows)
    rows.append(
        ("heads, region descriptors, final upsampling (the rest)", rest_ms, total_gflops - sum(gflops.values()))
    )
    return rows, total_ms, total_gflops


def peak_gflops(threads: int, n: int = 1024, seconds: float = 2.0) -> float:
    """Measured fp32 GFLOP/s of an n x n matrix product on ``threads`` torch threads (a practical peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def _fps(call, seconds: float = 3.0) -> float:
    call()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        count += 1
    return count / (time.perf_counter() - start)


def engine_fps(model: nn.Module, size: int, threads: int, engines: list[str], tmp: Path) -> dict[str, float | str]:
    """Frames per second at batch 1 of each engine on the same model (fp32): torch eager, ONNX Runtime and
    OpenVINO on an ONNX file of it (a note instead where an engine is not installed)."""
    x = torch.randn(1, 3, size, size)
    out: dict[str, float | str] = {}
    with torch.no_grad():
        out["torch"] = _fps(lambda: model({"image": x}))
    if not {"onnxruntime", "openvino"} & set(engines):
        return out

    class Logits(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.inner({"image": image}).logits

    path = tmp / "ea_dk.onnx"
    graph = Logits(model).eval()
    torch.onnx.export(graph, (x,), str(path), input_names=["image"], output_names=["logits"], dynamo=True)
    feed = x.numpy()
    if "onnxruntime" in engines:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out["onnxruntime"] = _fps(lambda: session.run(None, {"image": feed}))
    if "openvino" in engines:
        try:
            import openvino as ov
        except ImportError:
            out["openvino"] = "not installed (pip install -c constraints.txt -e '.[bench]')"
        else:
            core = ov.Core()
            compiled = core.compile_model(
                str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
            )
            request = compiled.create_infer_request()
            out["openvino"] = _fps(lambda: request.infer({0: feed}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=352)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an EADK model option")
    parser.add_argument("--engines", default="torch,onnxruntime,openvino")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    options = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    torch.set_num_threads(args.threads)
    print_environment()
    torch.manual_seed(0)
    model = create_model("ea_dk", encoder_weights=None, **options).eval()
    rows, total_ms, total_gflops = profile(model, args.size, args.repeats)
    peak = peak_gflops(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        fps = engine_fps(model, args.size, args.threads, args.engines.split(","), Path(tmp))
    baseline = float(fps["torch"])
    if options:
        today = create_model("ea_dk", encoder_weights=None).eval()
        baseline = float(engine_fps(today, args.size, args.threads, ["torch"], Path())["torch"])
    title = f"EA-DK {options or '(defaults)'} at {args.size}x{args.size}, batch 1, {args.threads} thread(s)"
    lines = [
        f"**{title}**",
        "",
        "| module | ms (torch eager) | share of time | GFLOPs | share of FLOPs |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {label} | {ms:.2f} | {100 * ms / total_ms:.1f}% | {g:.3f} | {100 * g / total_gflops:.1f}% |"
        for label, ms, g in rows
    ]
    lines += [f"| **whole forward** | **{total_ms:.2f}** | 100% | **{total_gflops:.3f}** | 100% |", ""]
    lines += [
        f"Peak: {peak:.1f} GFLOP/s (fp32 1024x1024 matrix product, torch, {args.threads} thread(s)).",
        "",
        f"Today's EA-DK (defaults), torch eager, same run: {baseline:.1f} frames/s.",
        "",
        "| engine (fp32) | frames/s | x torch eager | x today's EA-DK eager | GFLOP/s | fraction of peak |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for engine, value in fps.items():
        if isinstance(value, str):
            lines.append(f"| {engine} | {value} | | | | |")
        else:
            ratio = value / float(fps["torch"])
            lines.append(
                f"| {engine} | {value:.1f} | {ratio:.2f}x | {value / baseline:.2f}x | {value * total_gflops:.1f} | "
                f"{100 * value * total_gflops / peak:.0f}% |"
            )
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
