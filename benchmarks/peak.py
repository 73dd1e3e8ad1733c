"""Training throughput of both networks of the main comparison, at the widths the default profile trains
them with (normlib/profiles/default.yaml), in GFLOP/s (matmul and conv FLOPs of forward plus backward,
counted by torch.utils.flop_counter) as a fraction of an fp32 matrix-multiply peak measured in the same
run, in lockstep with the trainer: how close each trainer comes to what the machine can do.
"""
import torch
import torch.nn.functional as F

from normlib.models import from_config
from normlib.pipeline.plan import load_profile
from normlib.train import TrainConfig
from timing import BATCH, LR, MOMENTUM, lockstep, result


def profile_widths(name="default"):
    """{arch: TrainConfig fields} of the main comparison's networks in a profile: the MLP's hidden widths,
    the CNN's channels and fully connected width."""
    main = load_profile(name)[2]["main"]
    return {"mlp": {"hidden": tuple(main.get("hidden", TrainConfig().hidden))},
            "cnn": {"channels": tuple(main.get("channels", TrainConfig().channels)),
                    "hidden": (main.get("cnn_hidden", TrainConfig().hidden[-1]),)}}


def train_flops_per_example(config, device):
    """FLOPs of one training step's forward + backward per example (matmuls and convolutions, as
    counted by torch.utils.flop_counter; normalization and elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = from_config(config).to(device).train()
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
    """{mlp_fraction_of_peak, cnn_fraction_of_peak}: each network (batch norm, custom layers) at the default
    profile's widths, in lockstep with an fp32 matmul of 1024^3 (8192^3 on CUDA)."""
    n = 8192 if device == "cuda" else 1024  # large enough for the peak: MKL is there at 1024 on a CPU core
    out = {}
    for arch, widths in profile_widths().items():
        config = TrainConfig(arch=arch, norm="batch", batch_size=BATCH, lr=LR, momentum=MOMENTUM, max_steps=steps,
                             device=device, **widths)
        flops = train_flops_per_example(config, device)
        s = {"ours": [], "peak": []}
        for _ in range(repeats):
            for name, t in lockstep(config, data, {"peak": matmul_loop(n, device)}, warm, device).items():
                s[name] += t
        what = f"MLP {list(config.hidden)}" if arch == "mlp" else f"CNN {list(config.channels)}, FC {config.hidden[-1]}"
        note = (f"normlib.train on the {what} + batch norm (custom), batch {BATCH}, {flops / 1e6:.2f} MFLOP per "
                f"example (forward + backward); reference: fp32 matmul {n}^3")
        res = result(s["ours"], s["peak"], 0.30, "GFLOP/s", note, work=(flops * BATCH / 1e9, 2 * n ** 3 / 1e9))
        res["flops_per_example"] = flops
        out[f"{arch}_fraction_of_peak"] = res
    return out
