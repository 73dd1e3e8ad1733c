"""Training throughput (examples/s): normlib.train.train on the batch-norm MLP at batch 128, in lockstep
with a torchvision tutorial loop (FashionMNIST + ToTensor/Normalize + DataLoader with its defaults, as
the PyTorch quickstart writes it) and a bare loop over in-memory tensors (index, forward, backward,
step), all three training the same network with the same optimizer; for context, the matrix products
of that network's step alone run in the same lockstep.

Set-up and evaluation are outside the timed steps for every loop alike; normlib's per-step loss and
gradient-norm recording is inside.
"""
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from normlib.models import build_model
from normlib.paths import data_dir
from normlib.train import TrainConfig, make_optimizer
from timing import BATCH, LR, MOMENTUM, lockstep, result


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
