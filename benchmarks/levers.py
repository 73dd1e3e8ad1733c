"""The levers that pay for the default profile's budget, each measured side by side in this run:

1. evaluations (evals_2_vs_8): normlib.train.train with the default profile's validation evaluations per
   epoch against the 8 of the earlier default, same network, data and steps, runs alternated (A B, B A, ...):
   the ratio of their wall times, per network;
2. tuning (halving_vs_grid): the optimizer steps the default profile's successive halving spends on one
   condition against every rate of its grid at the full budget, counted from the protocol (not timed: the
   steps are the cost);
3. one owner per key (one_owner_vs_two): two clients asking for the same grid of trials at once (two
   notebooks of a run) through run_trials, sharing the results folder (each trial has one owner and is trained
   once) against two clients that each train every trial (jobs sent without their trial keys, so the pool
   cannot merge them either: what two notebooks did before trials were shared), on one pool of two workers:
   the ratio of wall times. (Two clients with a folder each are no reference: the pool merges jobs submitted
   under the same key, so they too train each trial once.)
4. the step (context): where a training step of each network spends its time (torch.profiler, self time of
   the matrix products and convolutions over the whole step), the reason the trainer does not batch seeds;
5. the CNN's first convolution (cnn_first_conv): a training step of the CNN at the default widths, its conv1
   on normlib's C++ kernel (models.FirstConv), against the same step with conv1 a plain nn.Conv2d (oneDNN),
   alternated (A B, B A, ...): the ratio of their step times.
"""
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from normlib import executors
from normlib.models import from_config
from normlib.paths import ROOT
from normlib.pipeline.plan import load_profile
from normlib.protocol import Protocol
from normlib.train import TrainConfig, make_optimizer, train
from peak import profile_widths
from timing import BATCH, LR, MOMENTUM, alternate, result


def bench_evaluations(data, device, steps, repeats):
    """Per network: train at the default profile's widths for `steps` steps (one epoch's worth of data is
    `steps` batches) with its evaluations per epoch and with 8, alternated; ratio of wall times."""
    main = load_profile("default")[2]["main"]
    evals = main.get("evals_per_epoch", 2)
    steps = min(steps, len(data.x_train) // BATCH)  # at most one epoch of the training split
    n = steps * BATCH
    small = dataclasses.replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n])
    out = {}
    for arch, widths in profile_widths().items():
        base = dict(arch=arch, norm="batch", batch_size=BATCH, epochs=1, train_size=n, device=device, **widths)
        times = {"ours": [], "reference": []}
        for i in range(repeats):
            order = [("ours", evals), ("reference", 8)]
            for side, k in order if i % 2 == 0 else order[::-1]:
                times[side].append(train(TrainConfig(evals_per_epoch=k, **base), small).wall_time)
        note = (f"{arch.upper()} at the default widths, one epoch of {steps} steps with {evals} validation "
                f"evaluations of {len(data.x_val)} images against 8 (the earlier default), runs alternated")
        out[f"{arch}_evals_{evals}_vs_8"] = result(times["ours"], times["reference"], 0.95, "s", note)
    return out


def bench_halving():
    """Optimizer steps of one condition's tuning in the default profile: successive halving against the grid."""
    main = load_profile("default")[2]["main"]
    proto = Protocol.from_params({k: v for k, v in main.items()})
    sizes = [n for _, n in proto.tuning_plan(("none",))]
    halving = sum(b * n for b, n in zip(proto.tuning_budgets, sizes))
    grid = len(proto.lrs)
    note = (f"{len(proto.lrs)} rates, rungs at {', '.join(f'{b:g}' for b in proto.tuning_budgets)} of the steps with "
            f"{', '.join(map(str, sizes))} rates; reference: every rate at the full budget (per tuning seed)")
    r = result([halving], [grid], 0.6, "full runs", note)
    r.update(ours=halving, reference=float(grid))
    return {"halving_vs_grid": r}


CLIENT = """
import json, sys
from normlib.train import TrainConfig
from normlib.trials import run_trials
configs = [TrainConfig(**c) for c in json.loads(sys.argv[1])]
run_trials(configs, cache=sys.argv[2], progress=False)
"""

# the reference: every trial trained by this client, whatever the other does (no cache, no trial keys)
CLIENT_ALONE = """
import json, sys
from normlib import executors, trials
from normlib.train import TrainConfig
jobs = [{"trial": trials.as_trial(TrainConfig(**c)).to_dict(), "device": "cpu", "threads": trials.THREADS,
         "expect": trials.environment()} for c in json.loads(sys.argv[1])]
for _ in executors.executor_for().map(trials.run_job, jobs):
    pass
"""


def bench_owners(trials, train_size):
    """Two client processes ask for the same `trials` small MLP trials at once on one warm pool of two
    workers: through run_trials with one results folder (one owner per key), and each training every trial."""
    configs = [TrainConfig(arch="mlp", norm="batch", epochs=1, train_size=train_size, val_size=1000, seed=s,
                           device="cpu").to_dict() for s in range(trials)]
    cluster = executors.start_local_cluster(2)
    times = {"ours": [], "reference": []}
    try:
        env = {**os.environ, "NORMLIB_SCHEDULER": cluster.scheduler_address, "PYTHONPATH": str(ROOT)}
        env.pop("NORMLIB_PROGRESS", None)

        def clients(folders):  # folders: run_trials's results folder per client; None: train every trial
            start = time.perf_counter()
            procs = [subprocess.Popen([sys.executable, "-c", CLIENT if f else CLIENT_ALONE, json.dumps(configs)]
                                      + ([f] if f else []), env=env) for f in folders]
            if any(p.wait() for p in procs):
                raise RuntimeError("a benchmark client failed")
            return time.perf_counter() - start

        with tempfile.TemporaryDirectory() as warm:
            clients([warm])  # the pool's workers import, load the data and compile once
        for i in range(2):
            for side in (("ours", "reference") if i == 0 else ("reference", "ours")):
                with tempfile.TemporaryDirectory() as a:
                    times[side].append(clients([a, a] if side == "ours" else [None, None]))
    finally:
        executors.stop_local_cluster(cluster)
    note = (f"two clients asking for the same {trials} trials (MLP + batch norm, 1 epoch on {train_size} images) at "
            f"once on a pool of two workers: one results folder (one owner per key) against each client training "
            f"every trial")
    return {"one_owner_vs_two": result(times["ours"], times["reference"], 0.7, "s", note)}


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::mkldnn_convolution", "aten::convolution_backward")


def step_profile(data, device, steps=30):
    """{arch: share of a training step's self time in matrix products and convolutions} at the default widths."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for arch, widths in profile_widths().items():
        config = TrainConfig(arch=arch, norm="batch", batch_size=BATCH, device=device, **widths)
        torch.manual_seed(0)
        model = from_config(config).to(device).train()
        opt = make_optimizer(config, model.parameters())
        x, y = data.x_train[:BATCH * steps].to(device), data.y_train[:BATCH * steps].to(device)

        def step(i):
            loss = F.cross_entropy(model(x[i * BATCH:(i + 1) * BATCH]), y[i * BATCH:(i + 1) * BATCH])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for i in range(5):
            step(i)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(steps):
                step(i)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        heavy = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
        out[arch] = heavy / total if total else float("nan")
    return out


def batched_seeds(device, calls, warm, seeds=5):
    """The CNN's heaviest layers at the default widths, forward + backward for `seeds` seeds of one condition
    (each seed its own batch): one layer per seed, as the trainer runs them, against all seeds in one layer
    (conv2 as a grouped convolution, fc3 as a batched matrix product), alternated:
    {layer: seconds batched / seconds separate}, the medians of the paired ratios."""
    widths = profile_widths()["cnn"]
    (c1, c2), hidden = widths["channels"], widths["hidden"][0]
    g = torch.Generator().manual_seed(0)

    def rand(*shape, grad=False):
        return torch.randn(*shape, generator=g).to(device).requires_grad_(grad)

    cases = {}
    x, w, dy = rand(BATCH, c1, 14, 14, grad=True), rand(c2, c1, 3, 3, grad=True), rand(BATCH, c2, 14, 14)
    xs, ws, dys = (rand(BATCH, seeds * c1, 14, 14, grad=True), rand(seeds * c2, c1, 3, 3, grad=True),
                   rand(BATCH, seeds * c2, 14, 14))
    cases["conv2"] = (lambda: [F.conv2d(x, w, padding=1).backward(dy) for _ in range(seeds)],
                      lambda: F.conv2d(xs, ws, padding=1, groups=seeds).backward(dys))
    a, m, da = rand(BATCH, c2 * 49, grad=True), rand(c2 * 49, hidden, grad=True), rand(BATCH, hidden)
    ab, mb = rand(seeds, BATCH, c2 * 49, grad=True), rand(seeds, c2 * 49, hidden, grad=True)
    dab = rand(seeds, BATCH, hidden)
    cases["fc3"] = (lambda: [(a @ m).backward(da) for _ in range(seeds)], lambda: torch.bmm(ab, mb).backward(dab))
    out = {}
    for layer, (separate, batched) in cases.items():
        t = alternate({"separate": separate, "batched": batched}, calls, warm, device)
        ratios = sorted(b / s for b, s in zip(t["batched"], t["separate"]))
        out[layer] = ratios[len(ratios) // 2]
    return out


def cnn_step(config, x, y, device, plain_conv1=False):
    """One training step of the CNN of `config` per call, on batches drawn in turn from (x, y): the model as
    the trainer builds it (conv1 on normlib's kernel on CPU) or, with plain_conv1, the same weights with conv1
    a plain nn.Conv2d (oneDNN)."""
    from torch import nn

    torch.manual_seed(config.seed)
    model = from_config(config).to(device).train()
    if plain_conv1:
        plain = nn.Conv2d(1, model.conv1.out_channels, 3, padding=1).to(device)
        plain.load_state_dict(model.conv1.state_dict())
        model.conv1 = plain
    opt = make_optimizer(config, model.parameters())
    batches = len(x) // BATCH
    count = iter(range(10 ** 9))

    def step():
        i = next(count) % batches
        loss = F.cross_entropy(model(x[i * BATCH:(i + 1) * BATCH]), y[i * BATCH:(i + 1) * BATCH])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def bench_first_conv(data, device, calls, warm):
    """A training step of the CNN + batch norm at the default widths with conv1 on normlib's kernel against the
    same step with conv1 an nn.Conv2d, alternated: ratio of step times."""
    widths = profile_widths()["cnn"]
    config = TrainConfig(arch="cnn", norm="batch", batch_size=BATCH, lr=LR, momentum=MOMENTUM, device=device, **widths)
    x, y = data.x_train[:BATCH * 50].to(device), data.y_train[:BATCH * 50].to(device)
    t = alternate({"ours": cnn_step(config, x, y, device), "reference": cnn_step(config, x, y, device, True)},
                  calls, warm, device)
    note = (f"a training step of the CNN {list(widths['channels'])}, FC {widths['hidden'][0]} + batch norm with conv1 "
            f"on normlib's kernel (csrc/conv.cpp); reference: the same step with conv1 an nn.Conv2d (oneDNN)")
    return {"cnn_first_conv": result(t["ours"], t["reference"], 0.9, "s", note)}
