"""normlab benchmark: normlib's trainer and layers against idiomatic PyTorch, on this machine.

    python benchmarks/bench.py                    # about a minute and a half on 2 CPU cores
    python benchmarks/bench.py --quick            # smoke run, well under a minute
    python benchmarks/bench.py --profiles quick   # also time the quick pipeline, cold then warm
    python benchmarks/bench.py --json PATH        # where to write the numbers (default results/benchmark.json)

What is measured (one run, side by side, ratios printed with the machine they were measured on):
1. training throughput (examples/s) of normlib.train.train on the batch-norm MLP at batch 128,
   against a torchvision tutorial loop (FashionMNIST + ToTensor/Normalize + DataLoader with its
   defaults, as the PyTorch quickstart writes it) and against a bare loop over in-memory tensors
   (index, forward, backward, step), all three training the same network with the same optimizer;
   for context, the matrix products of that network's step alone run in the same lockstep;
2. each from-scratch layer (normlib.norms), forward plus backward in train mode, against its torch
   built-in at MLP shapes (128, 256) and CNN shapes (128, 32, 28, 28); layer norm on conv maps also
   against nn.GroupNorm(1, C), torch's per-example alternative;
3. CNN training throughput in GFLOP/s (matmul and conv FLOPs of forward plus backward, counted by
   torch.utils.flop_counter) as a fraction of an fp32 matrix-multiply peak measured in the same run;
4. a grid of small trials through normlib.trials.run_trials on a pool of two worker processes
   against a pool of one (Dask LocalClusters, started and warm, as the pipeline's pool), from an
   empty cache;
5. with --profiles, wall time of `python -m normlib.pipeline --profile P` on a fresh copy of this
   working tree (cold: no cached trial, no built book), then of the same command again with
   nothing changed (warm). The copy lives in a temporary folder: this checkout is not touched.

Method. The compared sides run in lockstep, one step (or layer call) each in turn, A B A B ...,
every step timed on its own: normlib's trainer runs unmodified and a hook, called after each of
its optimizer steps, advances every reference loop by one step. After a warm-up, each side is
reported as its median step and the ratio as the median of the per-step ratios (each step of ours
against the reference's step run right after it), so a neighbour's load, which comes and goes,
hits both sides of a pair alike and cancels out of the ratio. Both
sides use the same device (CUDA when available, else CPU; on CUDA steps are timed in blocks of
10 between synchronizations) and the same torch threads: 1 by default, as normlib.trials runs every
trial (one single-threaded trial process per core, so the machine's throughput is cores x this
one); `--threads N` measures N-thread runs instead. With more threads than idle cores, OpenMP's
spinning barriers make op-heavy code (each of our layers is several torch ops) many times slower:
noise about the neighbours, not about the code. Set-up and evaluation are outside the timed
steps for every loop alike; normlib's per-step loss and gradient-norm recording is inside.
This is a measurement, not a test: the exit status is 0 whether or not a target holds.
"""
import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing normlib

from normlib.data import DataError, load_fashion_mnist  # noqa: E402
from normlib.paths import write_atomic  # noqa: E402
from normlib.models import build_model  # noqa: E402
from normlib.norms import make_norm  # noqa: E402
from normlib.paths import data_dir, results_dir  # noqa: E402
from normlib.train import TrainConfig, make_optimizer, resolve_device, train  # noqa: E402

BATCH = 128
LR, MOMENTUM = 0.05, 0.9  # TrainConfig's defaults, used by every loop
MLP_SHAPE, CNN_SHAPE = (128, 256), (128, 32, 28, 28)


# ----------------------------------------------------------------------------
# the machine and the timing method

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
# 1. training throughput: normlib's trainer, a torchvision tutorial loop, a bare in-memory loop

def mlp_and_optimizer(device):
    torch.manual_seed(0)
    model = build_model("mlp", "batch").to(device).train()  # the same network as the trainer's
    return model, make_optimizer(TrainConfig(lr=LR, momentum=MOMENTUM, device=device), model.parameters())


def bare_loop(x, y, device):
    """The plainest training loop over in-memory tensors, one step per next()."""
    model, opt = mlp_and_optimizer(device)
    while True:
        perm = torch.randperm(len(x), device=device)
        for i in range(len(x) // BATCH):
            idx = perm[i * BATCH:(i + 1) * BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            yield


def matmuls_loop(device):
    """Only the matrix products of one training step of the same MLP at batch BATCH, one step per next():
    the four forward products and the seven of the backward (weight gradients, and input gradients
    but for the first layer), on preallocated tensors. What a step costs when nothing else is done:
    the most any trainer of this network can reach."""
    torch.manual_seed(0)
    widths = (784, *TrainConfig().hidden, 10)
    acts = [torch.randn(BATCH, w, device=device) for w in widths]
    grads = [torch.randn(BATCH, w, device=device) for w in widths]
    ws = [torch.randn(o, i, device=device) / i ** 0.5 for i, o in zip(widths[:-1], widths[1:])]
    bs = [torch.zeros(o, device=device) for o in widths[1:]]
    dws = [torch.empty_like(w) for w in ws]
    while True:
        for i, (w, b) in enumerate(zip(ws, bs)):
            torch.addmm(b, acts[i], w.t(), out=acts[i + 1])
        for i in reversed(range(len(ws))):
            torch.mm(grads[i + 1].t(), acts[i], out=dws[i])
            if i:
                torch.mm(grads[i + 1], ws[i], out=grads[i])
        yield


def torchvision_loader(mean, std):
    """The tutorial input pipeline: a torchvision dataset decoding PIL images, a DataLoader with defaults."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    dataset = datasets.FashionMNIST(root=data_dir(), train=True, download=False, transform=transform)
    return DataLoader(dataset, batch_size=BATCH, shuffle=True)


def torchvision_loop(loader, device):
    """The PyTorch quickstart's training loop, one step (loading its batch included) per next()."""
    model, opt = mlp_and_optimizer(device)
    loss_fn = nn.CrossEntropyLoss()
    while True:
        for i, (xb, yb) in enumerate(loader):
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if i % 100 == 0:  # the quickstart prints the loss every 100 batches
                loss.item()
            yield


def bench_training(data, device, steps, warm, repeats):
    config = TrainConfig(arch="mlp", norm="batch", batch_size=BATCH, lr=LR, momentum=MOMENTUM,
                         max_steps=steps, device=device)
    x, y = data.x_train.to(device), data.y_train.to(device)
    loader = torchvision_loader(data.mean, data.std)
    s = {"ours": [], "torchvision": [], "bare": [], "matmuls": []}
    for _ in range(repeats):  # fresh models and loops each time
        refs = {"torchvision": torchvision_loop(loader, device), "bare": bare_loop(x, y, device),
                "matmuls": matmuls_loop(device)}
        for name, t in lockstep(config, data, refs, warm, device).items():
            s[name] += t
    what = f"MLP {config.hidden} + batch norm (custom), batch {BATCH}, SGD momentum"
    work = (BATCH, BATCH)
    # context, not a target: the torchvision loop's step over the step of the matrix products alone
    ceiling = statistics.median(t / m for t, m in zip(s["torchvision"], s["matmuls"]))
    return ceiling, {
        "train_vs_torchvision": result(s["ours"], s["torchvision"], 6.0, "examples/s",
                                       f"{what}; reference: torchvision FashionMNIST + DataLoader loop", work),
        "train_vs_bare": result(s["ours"], s["bare"], 0.95, "examples/s",
                                f"{what}; reference: bare loop over in-memory tensors", work)}


# ----------------------------------------------------------------------------
# 2. layers: from-scratch forward + backward against torch's built-ins

def layer_call(module, shape, device):
    """A function doing one forward + backward (input gradient included) through module."""
    torch.manual_seed(0)
    module = module.to(device).train()
    x = (5 * torch.randn(shape, device=device) + 12).requires_grad_()
    dy = torch.randn(shape, device=device)

    def call():
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).backward(dy)
    return call


class CopyFn(torch.autograd.Function):
    """The least a Python-level layer can cost: an autograd.Function copying its input forward and
    its gradient backward. Its time, next to the built-ins', bounds what a from-scratch layer can reach."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        return x.clone()

    @staticmethod
    def backward(ctx, dy):
        return dy.clone(), None, None


class CopyLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return CopyFn.apply(x, self.weight, self.bias)


def python_floor(device, calls):
    """Seconds of CopyLayer at MLP shapes as a fraction of BatchNorm1d's and LayerNorm's, called in turn."""
    c = MLP_SHAPE[1]
    s = alternate({name: layer_call(m, MLP_SHAPE, device) for name, m in
                   (("copy", CopyLayer(c)), ("batch", nn.BatchNorm1d(c)), ("layer", nn.LayerNorm(c)))}, calls, 3, device)
    med = {name: statistics.median(t) for name, t in s.items()}
    return {"copy_function_seconds": med["copy"], "of_batch_norm": med["copy"] / med["batch"],
            "of_layer_norm": med["copy"] / med["layer"]}


def builtin_layer_norm_vs_groupnorm(device, calls):
    """Seconds of torch's own nn.LayerNorm over nn.GroupNorm(1, C) at CNN shapes, called in turn: how
    the two built-ins compare on this machine (context for layer_norm_cnn_vs_groupnorm)."""
    c, f = CNN_SHAPE[1], CNN_SHAPE[1:]
    s = alternate({"layer": layer_call(nn.LayerNorm(f), CNN_SHAPE, device),
                   "group": layer_call(nn.GroupNorm(1, c), CNN_SHAPE, device)}, calls // 2, 3, device)
    return statistics.median(a / b for a, b in zip(s["layer"], s["group"]))


def bench_layers(device, calls):
    c, f = CNN_SHAPE[1], CNN_SHAPE[1:]
    pairs = {  # name: (shape, ours, reference, target ratio of times)
        "batch_norm_mlp": (MLP_SHAPE, make_norm("batch", MLP_SHAPE[1:]), nn.BatchNorm1d(MLP_SHAPE[1]), 1.2),
        "layer_norm_mlp": (MLP_SHAPE, make_norm("layer", MLP_SHAPE[1:]), nn.LayerNorm(MLP_SHAPE[1:]), 1.2),
        "batch_norm_cnn": (CNN_SHAPE, make_norm("batch", f), nn.BatchNorm2d(c), 1.2),
        "layer_norm_cnn": (CNN_SHAPE, make_norm("layer", f), nn.LayerNorm(f), 1.2),
        "layer_norm_cnn_vs_groupnorm": (CNN_SHAPE, make_norm("layer", f), nn.GroupNorm(1, c), 1.0),
    }
    out = {}
    for name, (shape, ours, ref, target) in pairs.items():
        n = calls // 2 if len(shape) == 4 else calls  # conv maps are 98x larger
        s = alternate({"ours": layer_call(ours, shape, device), "ref": layer_call(ref, shape, device)},
                      n, 3, device)
        note = f"forward + backward, train mode, float32, input {shape}; reference {ref}"
        out[name] = result(s["ours"], s["ref"], target, "s", note)
    return out


# ----------------------------------------------------------------------------
# 3. CNN training throughput as a fraction of the fp32 matmul peak

def train_flops_per_example(config, device):
    """FLOPs of one training step's forward + backward per example (matmuls and convolutions, as
    counted by torch.utils.flop_counter; normalization and elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(config.arch, config.norm, impl=config.impl, hidden=config.hidden,
                        channels=config.channels).to(device).train()
    x = torch.randn(config.batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (config.batch_size,), device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / config.batch_size


def matmul_loop(n, device):
    """(n, n) x (n, n) fp32 matrix products, one per next()."""
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, generator=gen) for _ in range(2))
    c = torch.empty(n, n, device=device)
    while True:
        torch.mm(a, b, out=c)
        yield


def bench_peak(data, device, steps, warm, repeats):
    config = TrainConfig(arch="cnn", norm="batch", batch_size=BATCH, lr=LR, momentum=MOMENTUM,
                         max_steps=steps, device=device)
    flops = train_flops_per_example(config, device)
    n = 8192 if device == "cuda" else 1024  # large enough for the peak: MKL is there at 1024 on a CPU core
    s = {"ours": [], "peak": []}
    for _ in range(repeats):
        for name, t in lockstep(config, data, {"peak": matmul_loop(n, device)}, warm, device).items():
            s[name] += t
    note = (f"normlib.train on CNN {config.channels} + batch norm (custom), batch {BATCH}, "
            f"{flops / 1e6:.2f} MFLOP per example (forward + backward); reference: fp32 matmul {n}^3")
    res = result(s["ours"], s["peak"], 0.30, "GFLOP/s", note, work=(flops * BATCH / 1e9, 2 * n ** 3 / 1e9))
    res["flops_per_example"] = flops
    return {"cnn_fraction_of_peak": res}


# ----------------------------------------------------------------------------
# 4. a grid of small trials on a pool of two workers against one (normlib.trials.run_trials)

def _warm_worker(train_size):
    """Run on each worker of a pool before it is timed: what a worker pays once per run."""
    from normlib.data import load_fashion_mnist
    from normlib.train import keep_freed_buffers

    keep_freed_buffers()
    load_fashion_mnist(val_size=1000, train_size=train_size)


def bench_grid(trials, epochs, train_size):
    """Wall time of normlib.trials.run_trials on `trials` small MLP trials (batch norm, `epochs` on
    train_size images, a few seconds each) from an empty cache, on a Dask LocalCluster of one worker
    process and then of two (one torch thread each), as the pipeline runs every trial of a build on one
    pool started once: each pool is started and every worker warmed up (imports, the stored splits, a
    short trial) before the timed grid, so the ratio measures throughput, not start-up. Both give the same Histories (checked).
    Returns one result: rate = trials per second, ratio two / one."""
    from normlib import executors
    from normlib.trials import run_trials

    configs = [TrainConfig(arch="mlp", norm="batch", epochs=epochs, train_size=train_size, val_size=1000, seed=s,
                           device="cpu") for s in range(trials)]
    warm = [TrainConfig(arch="mlp", norm="batch", max_steps=2, train_size=train_size, val_size=1000, seed=1000 + s,
                        device="cpu") for s in range(2)]
    times, results = {}, {}
    for workers in (1, 2):
        cluster = executors.start_local_cluster(workers)
        try:
            with tempfile.TemporaryDirectory() as cache:
                pool = executors.Dask(cluster.scheduler_address)
                pool.workers(lambda: _warm_worker(train_size))  # every worker: imports, kernels, the stored splits
                run_trials(warm[:workers], scheduler=cluster.scheduler_address, cache=cache, progress=False)
                start = time.perf_counter()
                results[workers] = run_trials(configs, scheduler=cluster.scheduler_address, cache=cache, progress=False)
                times[workers] = [time.perf_counter() - start]
        finally:
            executors.stop_local_cluster(cluster)
    same = all(a.history.step_loss == b.history.step_loss and a.history.test_acc == b.history.test_acc
               for a, b in zip(results[1], results[2]))
    per_trial = statistics.median(r.history.wall_time for r in results[1])
    note = (f"{trials} trials (MLP + batch norm, {epochs} epoch(s) on {train_size} images, {per_trial:.1f} s each "
            f"on one worker), empty cache, pools started and warm; reference: a pool of one worker; "
            f"identical results: {same}")
    res = result(times[2], times[1], 1.8, "trials/s", note, work=(trials, trials))
    res["identical_results"] = same
    return {"grid_two_workers_vs_one": res}


# ----------------------------------------------------------------------------
# 5. wall time of the pipeline's profiles, cold (empty results folder) and warm (nothing changed)

SKIP = {".git", ".venv", "data", "results", "_build", ".build-tmp", ".build-old", "book/notebooks", ".pytest_cache"}


def fresh_checkout(dest):
    """Copy this working tree to dest without environment, data, results and built output, so that
    the pipeline starts cold there and neither touches nor races anyone's book in this checkout."""
    def ignore(folder, names):
        rel = Path(folder).relative_to(ROOT)
        return [n for n in names if (rel / n).as_posix() in SKIP or n == "__pycache__" or n.endswith(".egg-info")]
    shutil.copytree(ROOT, dest, ignore=ignore)


def time_profile(profile, root, results, timeout):
    env = {**os.environ, "NORMLIB_RESULTS": str(results), "NORMLIB_DATA": str(data_dir()), "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "normlib.pipeline", "--root", str(root), "--profile", profile]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        rc, tail = proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        rc, tail = None, f"timed out after {timeout} s"
    return {"seconds": time.perf_counter() - start, "returncode": rc, "ok": rc == 0,
            "last_stderr_line": tail if rc != 0 else ""}


def bench_profiles(names, timeout):
    """Wall time of the pipeline on a fresh copy of this working tree: cold, then warm (nothing changed).
    The copy is deleted, unless a run failed: then it is kept, with the pipeline's logs, and named."""
    out = {}
    for profile in names:
        tmp = Path(tempfile.mkdtemp(prefix=f"normlab-bench-{profile}-"))
        root, results = tmp / "repo", tmp / "results"
        fresh_checkout(root)
        cold = time_profile(profile, root, results, timeout)
        warm = time_profile(profile, root, results, timeout)
        kept = None if cold["ok"] and warm["ok"] else str(tmp)
        if kept is None:
            shutil.rmtree(tmp, ignore_errors=True)
        out[f"profile_{profile}"] = {"command": f"python -m normlib.pipeline --profile {profile}", "cold": cold,
                                     "warm": warm, "warm_over_cold": warm["seconds"] / cold["seconds"], "kept": kept}
    return out


# ----------------------------------------------------------------------------
# reporting

def fmt(value, unit):
    if unit == "s":
        return f"{value * 1e3:.3f} ms"
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.2f} {unit}"


def line(name, r):
    verdict = "PASS" if r["holds"] else "MISS"
    return (f"{name}: ours {fmt(r['ours'], r['unit'])}, reference {fmt(r['reference'], r['unit'])}, "
            f"ratio {r['ratio']:.3f} (target {r['target_op']} {r['target']:g}) {verdict}")


def profile_line(name, r):
    def status(run):
        return "ok" if run["ok"] else f"FAILED (exit {run['returncode']}: {run['last_stderr_line']})"
    return (f"{name}: cold {r['cold']['seconds']:.1f} s {status(r['cold'])}, warm (nothing changed) "
            f"{r['warm']['seconds']:.1f} s {status(r['warm'])}, warm/cold {r['warm_over_cold']:.3f}"
            + (f"; the failed copy is kept in {r['kept']}" if r["kept"] else ""))


def write_json(path, payload):
    """Atomic write (normlib.paths.write_atomic: a temp file in the same folder, then a rename)."""
    write_atomic(path, json.dumps(payload, indent=1, allow_nan=False))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and calls (smoke run)")
    p.add_argument("--repeats", type=int, default=None,
                   help="training runs per comparison, each timed step by step (default 5, 1 with --quick)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for every measurement (default 1, as normlib.trials runs each trial)")
    p.add_argument("--profiles", nargs="*", choices=("quick", "default", "full"), default=None,
                   help="also time these pipeline profiles cold and warm (no name: quick); default takes ~20 min")
    p.add_argument("--profile-timeout", type=int, default=3600, help="seconds per pipeline run (default 3600)")
    p.add_argument("--json", type=Path, default=results_dir() / "benchmark.json",
                   help="write every number and the machine here (default: %(default)s)")
    args = p.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    if repeats < 1:
        p.error(f"--repeats {repeats}: must be >= 1")
    if args.threads < 1:
        p.error(f"--threads {args.threads}: must be >= 1")
    steps, warm, calls = (40, 10, 40) if args.quick else (150, 20, 200)

    torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    info = machine(device)
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} with {info['torch_threads']} "
          f"thread(s), device {device}{' (' + info['gpu'] + ')' if device == 'cuda' else ''}, "
          f"load average {info.get('load_average_1min', float('nan')):.2f}")
    if info.get("load_average_1min", 0) + args.threads > (info["cores"] or 1) + 0.5:
        print("note: other jobs are using this machine: absolute numbers are low, the lockstep ratios hold up better")
    print(f"method: sides in lockstep, median step per side, ratio = median of the paired steps' ratios; "
          f"training {repeats} x {steps - warm} steps after {warm} "
          f"warm-up steps, layers {calls} calls{' (--quick: a smoke run, rough numbers)' if args.quick else ''}",
          flush=True)

    started = time.perf_counter()
    try:
        data = load_fashion_mnist()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # the trainer evaluates after its last step, outside the timed steps: small held-out sets save time
    data = dataclasses.replace(data, x_val=data.x_val[:1000], y_val=data.y_val[:1000],
                               x_test=data.x_test[:1000], y_test=data.y_test[:1000])
    results = {}
    matmuls_ceiling, training = bench_training(data, device, steps, warm, repeats)
    for name, r in training.items():
        results[name] = r
        print(line(name, r), flush=True)
    for section in (lambda: bench_layers(device, calls),
                    lambda: bench_peak(data, device, steps // 3 + warm // 2, warm // 2, repeats),
                    lambda: bench_grid(4 if args.quick else 16, 1 if args.quick else 3, 2000 if args.quick else 20000)):
        for name, r in section().items():
            results[name] = r
            print(line(name, r), flush=True)
    floor = python_floor(device, calls)
    print(f"floor: a Python autograd.Function that only copies, forward and backward, at {MLP_SHAPE} takes "
          f"{floor['of_batch_norm']:.2f} of BatchNorm1d's time and {floor['of_layer_norm']:.2f} of LayerNorm's "
          f"(normlib's batch, layer and group norm run as C++ autograd Functions on CPU, below that floor)", flush=True)
    context = {"builtin_layer_norm_over_groupnorm": builtin_layer_norm_vs_groupnorm(device, calls)}
    print(f"context: torch's own nn.LayerNorm takes {context['builtin_layer_norm_over_groupnorm']:.2f} times as long as "
          f"nn.GroupNorm(1, {CNN_SHAPE[1]}) at {CNN_SHAPE}, forward + backward", flush=True)
    # the most a trainer could reach: nothing but its counted matmul FLOPs, at the matmul peak of this run
    mlp = TrainConfig(arch="mlp", norm="batch", batch_size=BATCH, device=device)
    peak = results["cnn_fraction_of_peak"]["reference"] * 1e9  # FLOP/s
    ceiling = peak / train_flops_per_example(mlp, device)  # examples/s
    context.update(mlp_matmul_ceiling_examples_per_s=ceiling,
                   ceiling_vs_torchvision=ceiling / results["train_vs_torchvision"]["reference"],
                   matmuls_only_vs_torchvision=matmuls_ceiling)
    print(f"context: at the measured matmul peak, the MLP's matmuls alone allow {ceiling:,.0f} examples/s: "
          f"{context['ceiling_vs_torchvision']:.2f} times the torchvision loop; run at their own shapes, in "
          f"lockstep with it, the MLP's 11 matrix products of a step alone reach {matmuls_ceiling:.2f} times it: "
          f"the most any trainer of this network could reach against it here", flush=True)
    profiles = {}
    if args.profiles is not None:
        profiles = bench_profiles(args.profiles or ["quick"], args.profile_timeout)
        for name, r in profiles.items():
            print(profile_line(name, r), flush=True)
    held = sum(r["holds"] for r in results.values())
    took = time.perf_counter() - started
    print(f"targets held: {held} of {len(results)}; benchmark took {took:.0f} s")
    settings = {"repeats": repeats, "steps": steps, "warm_steps": warm, "layer_calls": calls,
                "quick": args.quick, "batch_size": BATCH, "seconds": took}
    write_json(args.json, {"machine": info, "settings": settings, "results": results,
                           "python_function_floor": floor, "context": context, "profiles": profiles})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
