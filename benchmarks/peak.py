"""CNN training throughput in GFLOP/s (matmul and conv FLOPs of forward plus backward, counted by
torch.utils.flop_counter) as a fraction of an fp32 matrix-multiply peak measured in the same run, in
lockstep with the trainer.
"""
import torch
import torch.nn.functional as F

from normlib.models import build_model
from normlib.train import TrainConfig
from timing import BATCH, LR, MOMENTUM, lockstep, result


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
