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
3. the training throughput of the MLP and the CNN at the default profile's widths in GFLOP/s (matmul and
   conv FLOPs of forward plus backward, counted by torch.utils.flop_counter) as a fraction of an fp32
   matrix-multiply peak measured in the same run;
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

6. the levers that pay for the default profile's budget: fewer validation evaluations per epoch, the CNN's
   first convolution on normlib's kernel against oneDNN's, successive halving against the full grid, one
   owner per trial key against two notebooks training the same trials, and where a training step spends
   its time (levers.py).

One file per measurement, each read top to bottom: timing.py (the machine, the shared settings, lockstep,
alternate, result and the printed line), training.py (1), layers.py (2), peak.py (3), grid.py (4),
profiles.py (5), levers.py (6). This file runs them in one process and writes the JSON.
"""
import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # torch.profiler (levers.step_profile) quiet on stderr
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing normlib

from normlib.data import DataError, load_fashion_mnist  # noqa: E402
from normlib.paths import results_dir, write_atomic  # noqa: E402
from normlib.provenance import batched_text  # noqa: E402
from normlib.train import TrainConfig, resolve_device  # noqa: E402

# the measurements, one file each (beside this one)
from timing import BATCH, CNN_SHAPE, MLP_SHAPE, line, machine  # noqa: E402
from training import bench_training  # noqa: E402
from layers import bench_layers, builtin_layer_norm_vs_groupnorm, python_floor  # noqa: E402
from peak import bench_peak, train_flops_per_example  # noqa: E402
from grid import bench_grid  # noqa: E402
from levers import (batched_seeds, bench_evaluations, bench_first_conv, bench_halving, bench_owners,  # noqa: E402
                    step_profile)
from profiles import bench_profiles, profile_line  # noqa: E402


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
        full = load_fashion_mnist()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # the trainer evaluates after its last step, outside the timed steps: small held-out sets save time
    data = dataclasses.replace(full, x_val=full.x_val[:1000], y_val=full.y_val[:1000],
                               x_test=full.x_test[:1000], y_test=full.y_test[:1000])
    results = {}
    matmuls_ceiling, training = bench_training(data, device, steps, warm, repeats)
    for name, r in training.items():
        results[name] = r
        print(line(name, r), flush=True)
    for section in (lambda: bench_layers(device, calls),
                    lambda: bench_peak(data, device, steps // 3 + warm // 2, warm // 2, repeats),
                    lambda: bench_grid(4 if args.quick else 16, 1 if args.quick else 3, 2000 if args.quick else 20000),
                    # the levers that pay for the default profile's budget (levers.py)
                    lambda: bench_evaluations(full, device, 40 if args.quick else 430, 2 if args.quick else 4),
                    lambda: bench_first_conv(data, device, calls, warm),
                    bench_halving,
                    lambda: bench_owners(4 if args.quick else 8, 2000 if args.quick else 0)):
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
    context["step_in_matmuls"] = step_profile(data, device)
    context["seeds_batched_vs_separate"] = batched_seeds(device, max(calls // 4, 5), max(warm // 4, 2))
    print("context: where a training step spends its time at the default widths: "
          + ", ".join(f"{arch.upper()} {share:.0%}" for arch, share in context["step_in_matmuls"].items())
          + " of it in matrix products and convolutions (MKL, oneDNN); forward + backward, "
          + batched_text(context["seeds_batched_vs_separate"]), flush=True)
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
