"""Probes of a network during training: hooks `hook(step, model)` for normlib.train.train.

- DriftProbe: the 15th, 50th and 85th percentiles of the input to every unit of one or more modules
  over a fixed set of examples: the sigmoids of one layer (Ioffe & Szegedy 2015, Fig. 1b-c, "internal
  covariate shift") and the normalization layer before them (what the normalization is given).
- LandscapeProbe: at the current weights, move along the gradient by several step sizes and
  record the range of the loss, the change of the gradient and the effective beta-smoothness
  (Santurkar et al. 2018, sec. 3.2 and Fig. 4); `direction_probe` is the measurement itself.
- LayerGradProbe: the gradient norm of the first and the last layer at every step (vanishing or
  exploding gradients show as a ratio far from 1).
- GradRMSProbe: the root mean square of the weight gradient of every linear layer (the gradient norm
  per parameter, comparable between layers of 200,960 and 2,570 weights): vanishing or exploding
  gradients show as a large ratio between the layers.
- ScaleProbe: per linear layer the weight norm and the relative size of each update ||dW|| / ||W||
  (the effective step of a layer whose output a normalization makes invariant to the scale of W), and
  per normalization slot the variance of its input, over the features of an example (what layer norm
  divides by) and over the batch (batch norm), beside the norm's epsilon; the stable rank of each
  weight, and how many dimensions the examples' representation spans where it enters the output layer
  (participation_ratio; 1 when every example maps onto one line).
- EvalProbe: loss and accuracy in evaluation mode on a given set (the training set, for the
  generalization gap).
- BatchStatsProbe: at the end, the validation set evaluated three ways: batch norm with its running
  statistics (inference as usual), with the statistics of batches of the training batch size (as it
  trained), and with the statistics of large batches (the population statistics of the final weights).
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


def participation_ratio(z):
    """How many dimensions rows of z (examples x features) spread over: (sum l)^2 / sum l^2 over the
    eigenvalues l of their covariance. k for variance spread evenly over k directions, 1 when every
    example lies on one line through the mean, 0 when all are equal; unchanged by scaling z."""
    z = z.double() - z.double().mean(0)
    ev = torch.linalg.eigvalsh(z.T @ z / len(z)).clamp(min=0)
    return float(ev.sum() ** 2 / (ev ** 2).sum()) if ev.sum() > 0 else 0.0


def stable_rank(w):
    """||W||_F^2 / ||W||_2^2 of a weight (flattened to output x input): 1 for a rank-one matrix, k for k
    orthogonal directions of equal size; unchanged by scaling W."""
    s = torch.linalg.svdvals(w.detach().double().flatten(1))
    return float((s ** 2).sum() / s[0] ** 2) if s[0] > 0 else 0.0


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
    """Every `every` steps (and at step 1), the quantiles over the examples x of the input to each module
    named in `layers` (e.g. act3, the last hidden sigmoid, and norm3, the normalization before it), for
    each of its units. The network runs on a copy in training mode (batch norm normalizes x with the
    statistics of x itself)."""

    def __init__(self, x, *, layer="act3", layers=None, every=10, quantiles=QUANTILES):
        self.x, self.every, self.quantiles = x, every, tuple(quantiles)
        self.layers = tuple(layers) if layers else (layer,)
        self.steps, self.values = [], {name: [] for name in self.layers}  # per record, (len(quantiles), units)

    @torch.no_grad()
    def __call__(self, step, model):
        if step % self.every and step != 1:
            return
        probe = copy.deepcopy(model).train()
        seen = {}
        handles = [getattr(probe, name).register_forward_pre_hook(
            lambda _m, inputs, name=name: seen.setdefault(name, inputs[0])) for name in self.layers]
        probe(self.x)
        for h in handles:
            h.remove()
        self.steps.append(step)
        for name in self.layers:
            q = torch.quantile(seen[name], torch.tensor(self.quantiles), dim=0)  # (Q, units)
            self.values[name].append(q.tolist())

    def result(self):
        return {"step": self.steps, "quantiles": list(self.quantiles), "layer": self.layers[0],
                "values": self.values[self.layers[0]], "by_layer": self.values}


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


def linear_layers(model):
    """The named Linear (or weight-normalized Linear) layers of a network, input to output."""
    return [(name, m) for name, m in model.named_children() if name.startswith("fc") or name == "out"]


def _weight(module):
    return module.weight if hasattr(module, "weight") and module.weight is not None else module.v


class GradRMSProbe:
    """Every `every` steps, the root mean square of the weight gradient of each linear layer,
    ||dL/dW|| / sqrt(#W) (read after the optimizer step: the gradients stay until the next backward)."""

    def __init__(self, every=1):
        self.every = every
        self.records = {"step": [], "rms": []}  # rms: per record, one value per layer
        self.layers = None

    @torch.no_grad()
    def __call__(self, step, model):
        if step % self.every and step != 1:
            return
        layers = linear_layers(model)
        self.layers = [name for name, _ in layers]
        grads = [_weight(m).grad for _, m in layers]
        self.records["step"].append(step)
        self.records["rms"].append([(torch.linalg.vector_norm(g) / math.sqrt(g.numel())).item() for g in grads])

    def result(self):
        return dict(self.records, layers=self.layers or [])


class ScaleProbe:
    """Every `every` steps (and at step 1): per linear layer the Frobenius norm of its weight, its stable
    rank and the relative size of the last update, ||W_t - W_{t-1}|| / ||W_{t-1}||; the participation
    ratio of the examples' representation entering the output layer; per normalization slot (norm1,
    norm2, ...) the variance of its input over the examples x, per example over the features (layer
    norm's statistic) and per feature over the examples (batch norm's), each averaged. The weights of the
    step before are kept at every step (a copy of the linear layers' weights)."""

    def __init__(self, x, *, every=10):
        self.x, self.every = x, every
        self.previous = None
        self.records = {"step": [], "weight_norm": [], "update": [], "var_example": [], "var_batch": [],
                        "stable_rank": [], "rep_dims": []}
        self.layers, self.norms = [], []

    @torch.no_grad()
    def __call__(self, step, model):
        layers = linear_layers(model)
        weights = [_weight(m).detach() for _, m in layers]
        if step % self.every == 0 or step == 1:
            self.layers = [name for name, _ in layers]
            norms = [torch.linalg.vector_norm(w).item() for w in weights]
            if self.previous is not None:
                update = [torch.linalg.vector_norm(w - p).item() / max(torch.linalg.vector_norm(p).item(), 1e-30)
                          for w, p in zip(weights, self.previous)]
            else:
                update = [float("nan")] * len(weights)
            var_example, var_batch, rep_dims = self._inputs(model)
            ranks = [stable_rank(w) for w in weights]
            for k, v in zip(self.records, (step, norms, update, var_example, var_batch, ranks, rep_dims)):
                self.records[k].append(v)
        self.previous = [w.clone() for w in weights]

    def _inputs(self, model):
        """The norms' input variances (per example, per feature) and the participation ratio of the
        output layer's input, on a copy in training mode."""
        probe = copy.deepcopy(model).train()
        names = [name for name, _ in probe.named_children() if name.startswith("norm")]
        self.norms = names
        seen = {}
        handles = [getattr(probe, name).register_forward_pre_hook(
            lambda _m, inputs, name=name: seen.setdefault(name, inputs[0].flatten(1))) for name in names + ["out"]]
        probe(self.x)
        for h in handles:
            h.remove()
        per_example = [seen[n].var(dim=1, unbiased=False).mean().item() for n in names]  # (N, F) -> over F
        per_batch = [seen[n].var(dim=0, unbiased=False).mean().item() for n in names]  # over N
        return per_example, per_batch, participation_ratio(seen["out"])

    def result(self):
        return dict(self.records, layers=self.layers, norms=self.norms)


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


class BatchStatsProbe:
    """At the last step, the validation set (x, y) evaluated three ways, on copies of the network:
    "running": evaluation mode (batch norm with its running statistics, as at inference);
    "batch": training mode in batches of the training batch size (each batch normalized with its own
    statistics, as the network trained); "population": training mode in batches of `large` examples
    (statistics close to the population's at the final weights). Each: loss and accuracy."""

    def __init__(self, x, y, *, at_step, batch_size, large=500):
        self.x, self.y, self.at_step, self.batch_size, self.large = x, y, at_step, batch_size, large
        self.records = {}

    @torch.no_grad()
    def __call__(self, step, model):
        if step != self.at_step:
            return
        self.records["running"] = dict(zip(("loss", "acc"), evaluate(model, self.x, self.y)))
        for name, size in (("batch", self.batch_size), ("population", self.large)):
            self.records[name] = dict(zip(("loss", "acc"), self._train_mode(model, size)))

    def _train_mode(self, model, size):
        probe = copy.deepcopy(model).train()
        size = min(size, len(self.x))
        n = len(self.x) // size * size  # whole batches only (a batch of 1 has no batch statistics)
        loss, correct = 0.0, 0
        for i in range(0, n, size):
            logits = probe(self.x[i:i + size])
            loss += F.cross_entropy(logits, self.y[i:i + size], reduction="sum").item()
            correct += (logits.argmax(1) == self.y[i:i + size]).sum().item()
        return loss / n, correct / n

    def result(self):
        return dict(self.records)


PROBES = {  # name -> (config, data, options) -> hook
    "drift": lambda c, d, o: DriftProbe(d.x_train[:o.get("probe_size", 1000)], layer=o.get("layer", "act3"),
                                        layers=o.get("layers"), every=o.get("every", 10)),
    "landscape": lambda c, d, o: LandscapeProbe(d.x_train, d.y_train, batch_size=c.batch_size, lr=c.lr,
                                                multipliers=o.get("multipliers", (0.5, 1, 2, 4)),
                                                every=o.get("every", 5), seed=c.seed),
    "layer_grads": lambda c, d, o: LayerGradProbe(),
    "train_eval": lambda c, d, o: EvalProbe(d.x_train, d.y_train, at_steps=[total_steps(c, len(d.x_train))]),
    "grad_rms": lambda c, d, o: GradRMSProbe(every=o.get("every", 1)),
    "scales": lambda c, d, o: ScaleProbe(d.x_train[:o.get("probe_size", 500)], every=o.get("every", 10)),
    "batch_stats": lambda c, d, o: BatchStatsProbe(d.x_val, d.y_val, at_step=total_steps(c, len(d.x_train)),
                                                   batch_size=c.batch_size, large=o.get("large", 500)),
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
