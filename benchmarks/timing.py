"""What every measurement of the benchmark shares: the settings of its networks, the machine it ran on,
and the timing method.

Method. The compared sides run in lockstep, one step (or layer call) each in turn, A B A B ..., every
step timed on its own (lockstep: normlib's trainer runs unmodified and a hook, called after each of its
optimizer steps, advances every reference loop by one step; alternate: zero-argument calls in A B, B A
order). After a warm-up, each side is reported as its median step and the ratio as the median of the
per-step ratios (result), so a neighbour's load, which comes and goes, hits both sides of a pair alike
and cancels out of the ratio. On CUDA steps are timed in blocks of 10 between synchronizations.
"""
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from normlib.train import train

BATCH = 128
LR, MOMENTUM = 0.05, 0.9  # TrainConfig's defaults, used by every loop
MLP_SHAPE, CNN_SHAPE = (128, 256), (128, 32, 28, 28)


def machine(device):
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": device, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = os.getloadavg()[0]  # others' jobs on a shared machine
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def block_size(device):
    """Steps timed together: 1 on CPU; on CUDA 10, so that synchronizing rarely stalls a loop's queue."""
    return 10 if device == "cuda" else 1


def lockstep(config, data, references, warm, device):
    """Seconds per step of normlib.train.train(config, data) and of each reference loop (a generator
    doing one step per next()), run in lockstep: after every block of trainer steps a hook runs the
    same number of steps of each reference, each side timed on its own. The first `warm` steps of
    every side are dropped. Returns {"ours": [...], name: [...]}."""
    block = block_size(device)
    times = {"ours": [], **{name: [] for name in references}}
    mark = []

    def hook(step, _model):
        if step % block:
            return
        sync(device)
        now = time.perf_counter()
        timed = bool(mark) and step > warm  # the trainer's first block has no start mark
        if timed:
            times["ours"].append((now - mark[-1]) / block)
        for name, loop in references.items():
            start = time.perf_counter()
            for _ in range(block):
                next(loop)
            sync(device)
            if timed:
                times[name].append((time.perf_counter() - start) / block)
        mark.append(time.perf_counter())

    train(config, data, hooks=[hook])
    return times


def alternate(steps, calls, warm, device):
    """Seconds of each call of the zero-argument functions in steps ({name: fn}), called in turn
    `calls` times each, in A B, B A, A B ... order so that neither side always goes first; the first
    `warm` rounds are dropped. Returns {name: [...]}, the i-th entries from the same round."""
    block = block_size(device)
    times = {name: [] for name in steps}
    order = list(steps.items())
    for i in range(0, warm + calls, block):
        for name, fn in order if (i // block) % 2 == 0 else order[::-1]:
            sync(device)
            start = time.perf_counter()
            for _ in range(block):
                fn()
            sync(device)
            if i >= warm:
                times[name].append((time.perf_counter() - start) / block)
    return times


def result(ours, reference, target, unit, note, work=None):
    """One comparison from both sides' seconds per step, paired as they ran (step i of ours beside
    step i of the reference): each side as its median step, a rate (work per step / seconds, higher
    is better) when work = (ours, reference) is given, else seconds (lower is better); the ratio
    ours/reference is the median of the per-pair ratios, which a load that comes and goes during
    the run cancels out of. Quartiles of the step times show the noise."""
    w_ours, w_ref = work or (1.0, 1.0)
    pairs = [(w_ours * r) / (w_ref * o) if work else o / r for o, r in zip(ours, reference)]
    quartiles = {side: [float(q) for q in statistics.quantiles(t, n=4)] if len(t) > 1 else [t[0]] * 3
                 for side, t in (("ours", ours), ("reference", reference))}
    a, b = quartiles["ours"][1], quartiles["reference"][1]
    if work:
        a, b = w_ours / a, w_ref / b
    ratio = statistics.median(pairs)
    return {"ours": a, "reference": b, "ratio": ratio, "ratio_of_medians": a / b, "target": target,
            "target_op": ">=" if work else "<=", "holds": bool(ratio >= target if work else ratio <= target),
            "unit": unit, "note": note, "pairs": len(pairs), "step_seconds_quartiles": quartiles}


# ----------------------------------------------------------------------------
# the printed line of a result

def fmt(value, unit):
    if unit == "s":
        return f"{value * 1e3:.3f} ms"
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.2f} {unit}"


def line(name, r):
    verdict = "PASS" if r["holds"] else "MISS"
    return (f"{name}: ours {fmt(r['ours'], r['unit'])}, reference {fmt(r['reference'], r['unit'])}, "
            f"ratio {r['ratio']:.3f} (target {r['target_op']} {r['target']:g}) {verdict}")
