"""Probes of a network during training: hooks `hook(step, model)` for normlib.train.train.

- DriftProbe: the 15th, 50th and 85th percentiles of the input to every sigmoid of one layer
  over a fixed set of examples (Ioffe & Szegedy 2015, Fig. 1b-c, "internal covariate shift").
- LandscapeProbe: at the current weights, move along the gradient by several step sizes and
  record the range of the loss, the change of the gradient and the effective beta-smoothness
  (Santurkar et al. 2018, sec. 3.2 and Fig. 4); `direction_probe` is the measurement itself.
- LayerGradProbe: the gradient norm of the first and the last layer at every step (vanishing or
  exploding gradients show as a ratio far from 1).
- EvalProbe: loss and accuracy in evaluation mode on a given set (the training set, for the
  generalization gap).
A probe never changes the model it looks at: it measures a copy (batch norm in training mode,
so it normalizes with the statistics of the batch it sees, and the copy's running statistics
are thrown away). `result()` returns plain lists for the result cache.

`run` trains a normlib.trials.Trial (a TrainConfig, a probe and a network of
normlib.models.VARIANTS) with its probe as a hook. Everything a probed trial's result depends on is
in this file and in the trainer's files, so their digest keys the result cache (normlib.trials).
"""
import copy
import math

import torch
import torch.nn.functional as F

from normlib.data import load_fashion_mnist
from normlib.models import VARIANTS
from normlib.train import evaluate, train

QUANTILES = (0.15, 0.5, 0.85)


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def direction_probe(model, x, y, etas, loss_fn=F.cross_entropy):
    """Santurkar et al. 2018, Fig. 4 at one point w: with g = grad L(w) on the batch (x, y),
    loss_range = max - min of L(w - eta g) over eta in {0} + etas,
    grad_change = max over eta of ||grad L(w - eta g) - g||    (gradient predictiveness: small is predictive),
    beta        = max over eta of ||grad L(w - eta g) - g|| / ||eta g||   (effective beta-smoothness).
    Non-finite losses or gradients along the way give inf. The model itself is left untouched."""
    probe = copy.deepcopy(model).train()
    params = [p for p in probe.parameters() if p.requires_grad]
    w0 = [p.detach().clone() for p in params]

    def loss_and_grad():
        loss = loss_fn(probe(x), y)
        return loss.item(), _flat(torch.autograd.grad(loss, params))  # (P,)

    loss0, g0 = loss_and_grad()
    g_norm = torch.linalg.vector_norm(g0).item()
    losses, changes, betas = [loss0], [], []
    for eta in etas:
        with torch.no_grad():
            for p, w, g in zip(params, w0, torch.split(g0, [p.numel() for p in params])):
                p.copy_(w - eta * g.view_as(p))
        loss, g = loss_and_grad()
        change = torch.linalg.vector_norm(g - g0).item()
        losses.append(loss)
        changes.append(change)
        betas.append(change / (eta * g_norm) if g_norm > 0 else float("inf"))
    finite = all(math.isfinite(v) for v in losses + changes + betas)
    inf = float("inf")
    return {"loss": loss0, "grad_norm": g_norm,
            "loss_range": max(losses) - min(losses) if finite else inf,
            "grad_change": max(changes) if finite else inf,
            "beta": max(betas) if finite else inf}


class LandscapeProbe:
    """Every `every` steps, direction_probe on a fresh random training batch with step sizes
    eta = lr * multiplier (the step sizes SGD itself takes, and larger ones)."""

    def __init__(self, x, y, *, batch_size, lr, multipliers=(0.5, 1, 2, 4), every=5, seed=0):
        self.x, self.y, self.batch_size, self.every = x, y, batch_size, every
        self.etas = [lr * m for m in multipliers]
        self.gen = torch.Generator().manual_seed(seed)
        self.records = {k: [] for k in ("step", "loss", "grad_norm", "loss_range", "grad_change", "beta")}

    def __call__(self, step, model):
        if step % self.every:
            return
        idx = torch.randint(len(self.x), (self.batch_size,), generator=self.gen)  # (B,)
        r = direction_probe(model, self.x[idx], self.y[idx], self.etas)
        for k, v in {"step": step, **r}.items():
            self.records[k].append(v)

    def result(self):
        return dict(self.records, etas=self.etas)


class DriftProbe:
    """Every `every` steps (and at step 1), the quantiles over the examples x of the input to the
    module named `layer` (e.g. act3, the last hidden sigmoid), for each of its units."""

    def __init__(self, x, *, layer="act3", every=10, quantiles=QUANTILES):
        self.x, self.layer, self.every, self.quantiles = x, layer, every, tuple(quantiles)
        self.steps, self.values = [], []  # values: per record, (len(quantiles), units)

    @torch.no_grad()
    def __call__(self, step, model):
        if step % self.every and step != 1:
            return
        probe = copy.deepcopy(model).train()
        seen = []
        handle = getattr(probe, self.layer).register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
        probe(self.x)
        handle.remove()
        q = torch.quantile(seen[0], torch.tensor(self.quantiles), dim=0)  # (Q, units)
        self.steps.append(step)
        self.values.append(q.tolist())

    def result(self):
        return {"step": self.steps, "quantiles": list(self.quantiles), "values": self.values, "layer": self.layer}


class LayerGradProbe:
    """At every step, the L2 norm of the gradient of the parameters of module `first` and of `last`
    (read after the optimizer step: the gradients stay until the next backward)."""

    def __init__(self, first="fc1", last="out"):
        self.first, self.last = first, last
        self.records = {"step": [], "first": [], "last": []}

    @torch.no_grad()
    def __call__(self, step, model):
        norms = [torch.linalg.vector_norm(_flat([p.grad for p in getattr(model, name).parameters()])).item()
                 for name in (self.first, self.last)]
        for k, v in zip(("step", "first", "last"), [step, *norms]):
            self.records[k].append(v)

    def result(self):
        return dict(self.records, layers=[self.first, self.last])


class EvalProbe:
    """At the given steps, loss and accuracy of the network in evaluation mode (batch norm with its
    running statistics) on (x, y): on the training set this gives the generalization gap measured with
    the same inference network as the validation loss."""

    def __init__(self, x, y, *, at_steps):
        self.x, self.y, self.at_steps = x, y, set(at_steps)
        self.records = {"step": [], "loss": [], "acc": []}

    def __call__(self, step, model):
        if step not in self.at_steps:
            return
        loss, acc = evaluate(model, self.x, self.y)
        for k, v in zip(("step", "loss", "acc"), (step, loss, acc)):
            self.records[k].append(v)

    def result(self):
        return dict(self.records)


PROBES = {  # name -> (config, data, options) -> hook
    "drift": lambda c, d, o: DriftProbe(d.x_train[:o.get("probe_size", 1000)], layer=o.get("layer", "act3"),
                                        every=o.get("every", 10)),
    "landscape": lambda c, d, o: LandscapeProbe(d.x_train, d.y_train, batch_size=c.batch_size, lr=c.lr,
                                                multipliers=o.get("multipliers", (0.5, 1, 2, 4)),
                                                every=o.get("every", 5), seed=c.seed),
    "layer_grads": lambda c, d, o: LayerGradProbe(),
    "train_eval": lambda c, d, o: EvalProbe(d.x_train, d.y_train, at_steps=[total_steps(c, len(d.x_train))]),
}


def total_steps(config, n_train):
    """Optimizer steps of a full run (as normlib.train.train counts them)."""
    total = n_train // config.batch_size * config.epochs
    return min(total, config.max_steps) if config.max_steps else total


def run(t, device=None):
    """Train one normlib.trials.Trial on `device` (default: its config's); returns (History, the probe's
    result dict, {} without a probe)."""
    c = t.config
    data = load_fashion_mnist(val_size=c.val_size, split_seed=c.split_seed, train_size=c.train_size)
    hooks = [PROBES[t.probe](c, data, dict(t.options))] if t.probe else []
    hist = train(c, data, hooks=hooks, build=VARIANTS[t.model], device=device)
    return hist, (hooks[0].result() if hooks else {})
