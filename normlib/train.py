"""The trainer: one config in, one History out (nanoGPT-style frozen dataclass config).

Mini-batch SGD with momentum, or Adam, over in-memory tensors batched by indexing, the learning
rate decayed to 0 by a cosine over the run (default; "constant" keeps it fixed), optionally after a
linear warmup from 0 over a fraction of the steps (lr_at). Every
step records the training loss and the global gradient norm; every 1/evals_per_epoch of an
epoch the validation set is evaluated (BN then uses its running statistics); the test set
is evaluated once at the end. A non-finite loss stops the run and marks it diverged.
The test set is evaluated at the end with the last weights and with the weights of the best
validation evaluation (the best-validation checkpoint).
On CPU the same config gives an identical History (seeded init, shuffling and data split), also
when several trials train at once as threads of one process: each trial draws its initial weights
under a lock from a forked copy of torch's global generator and shuffles with its own generator.
"""
import math
import threading
import time
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F

from normlib.data import N_TRAIN, load_fashion_mnist
from normlib import params
from normlib.models import from_config
from normlib.weight_norm import data_dependent_init


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "mlp"                 # mlp | cnn
    norm: str = "none"                # none | batch | layer | weight | group
    impl: str = "custom"              # custom (normlib.norms) | torch (built-in layers)
    activation: str = "relu"          # relu | sigmoid | tanh
    norm_position: str = "before"     # norm before or after the activation
    hidden: tuple = (256, 256, 256)   # MLP hidden widths; the CNN's FC layer uses hidden[-1]
    channels: tuple = (16, 32)        # CNN conv channels
    init_scale: float | None = None   # None: PyTorch default init; else weights ~ N(0, init_scale^2)
    norm_eps: float = 1e-5            # epsilon under the square root of batch, layer and group norm
    dropout: float = 0.0              # probability of dropping a hidden unit in training (0: none)
    data_init: bool = False           # weight norm (custom): Salimans & Kingma's data-dependent init
    optimizer: str = "sgd"            # sgd (with momentum) | adam
    lr: float = 0.05                  # peak learning rate
    schedule: str = "cosine"          # constant | cosine (decays to 0 over the run, per step); with a
                                      # constant lr the last iterate's test accuracy jitters by ~1 point
    warmup: float = 0.0               # fraction of the steps over which the rate rises linearly from 0
    momentum: float = 0.9             # SGD only
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 1
    max_steps: int = 0                # stop after this many steps (0: no limit)
    seed: int = 0                     # model init and shuffling
    split_seed: int = 0               # train/validation split
    train_size: int = 0               # training examples (0: all 55,000)
    val_size: int = 5000
    evals_per_epoch: int = 1          # validation evaluations per epoch
    device: str = "auto"              # auto (CUDA when available) | cpu | cuda

    def __post_init__(self):
        """Every field against its rule in normlib.params.RULES (one source of validation rules for the
        pipeline, the notebooks, TrainConfig and build_model), then the checks that relate fields."""
        for f in fields(self):
            value = params.check(f.name, getattr(self, f.name), where="TrainConfig")
            object.__setattr__(self, f.name, tuple(value) if isinstance(value, list) else value)
        if self.lr is None:
            raise params.ParameterError("TrainConfig.lr = None: a run needs a learning rate")
        if self.data_init and (self.norm, self.impl) != ("weight", "custom"):
            raise params.ParameterError(f"TrainConfig.data_init = True: needs norm='weight' and impl='custom' "
                                        f"(got norm={self.norm!r}, impl={self.impl!r})")
        if self.train_size > N_TRAIN - self.val_size:
            raise params.ParameterError(f"TrainConfig.train_size = {self.train_size}: must be at most "
                                        f"{N_TRAIN - self.val_size} (the training images left after val_size)")
        if (self.train_size or N_TRAIN - self.val_size) < self.batch_size:
            raise params.ParameterError(f"TrainConfig.batch_size = {self.batch_size}: must not exceed the training "
                                        f"set ({self.train_size or N_TRAIN - self.val_size} examples)")

    @classmethod
    def from_dict(cls, d):
        """Rebuild from to_dict(); lists become tuples again. Unknown keys raise TypeError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TypeError(f"TrainConfig: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class History:
    config: dict
    step_loss: list = field(default_factory=list)       # training loss of every step
    step_grad_norm: list = field(default_factory=list)  # global L2 norm of the gradient at every step
    eval_step: list = field(default_factory=list)       # step count at each evaluation
    eval_epoch: list = field(default_factory=list)      # epochs done at each evaluation
    train_loss: list = field(default_factory=list)      # mean step loss since the previous evaluation
    train_acc: list = field(default_factory=list)       # training accuracy (train mode) since then
    val_loss: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)
    test_loss: float = float("nan")                     # test set, last weights
    test_acc: float = float("nan")
    best_step: int | None = None                        # the evaluation with the lowest validation loss
    best_test_loss: float = float("nan")                # test set, weights of that evaluation
    best_test_acc: float = float("nan")
    steps_per_epoch: int = 0
    wall_time: float = 0.0
    diverged: bool = False
    diverged_step: int | None = None
    device: str = "cpu"

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


_INIT_LOCK = threading.Lock()  # model construction draws from torch's global generator
_ALLOCATOR_TUNED = False


def keep_freed_buffers():
    """Once per process: let glibc's malloc keep large freed blocks for reuse instead of returning them to
    the OS. By default (and much more so under a Dask nanny, which sets MALLOC_TRIM_THRESHOLD_ and so
    fixes the mmap threshold at 128 KiB) every activation buffer of a training step is mmap'd and
    unmapped again, and each step pays a page fault per page it touches: a CNN step took 2 to 3 times
    longer. Harmless elsewhere (no glibc: nothing to do); results are unchanged (allocation only)."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD: blocks below 256 MiB come from the heap
    libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD: keep up to 512 MiB of free heap for reuse


def seeded_model(config, build):
    """build(config) with the global generator seeded by config.seed, under a lock and on a fork of
    the generator's state: trials running as threads of one process (a Dask worker with several
    threads) neither interleave their draws nor change each other's."""
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build(config)


def resolve_device(device):
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@torch.no_grad()
def evaluate(model, x, y, batch_size=250):
    """Mean cross-entropy and accuracy over (x, y), model in eval mode (batches of 250: on CPU about twice
    as fast per example as batches of 1000, whose activations no longer fit the caches)."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        loss += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return loss / len(x), correct / len(x)


def make_optimizer(config, params):
    """SGD with momentum or Adam, fused: one kernel call updates every parameter (torch's fused CPU and
    CUDA implementations of the same update rule), instead of a few small ops per parameter tensor."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               fused=True)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def lr_at(config, step, total):
    """The learning rate of 1-based optimizer step `step` of a run of `total` steps: a linear rise over the
    first round(warmup * total) steps (step k of W at lr * k / W), then the schedule over the steps left:
    constant, or a cosine from lr at the first step after the warmup to 0 at the end."""
    warm = round(config.warmup * total)
    if step <= warm:
        return config.lr * step / warm
    if config.schedule == "constant":
        return config.lr
    return config.lr * 0.5 * (1 + math.cos(math.pi * (step - 1 - warm) / (total - warm)))


def train(config, data=None, *, hooks=(), progress=False, build=None, device=None):
    """Train one model from scratch and return its History.
    data: Splits (default: load_fashion_mnist with the config's split); hooks: callables
    hook(step, model) run after every optimizer step (studies use them to probe the model);
    build: build(config) -> nn.Module for a network build_model does not make (a study's variant,
    normlib.models.VARIANTS), created at the same point of the seeded sequence, so the rest of the run is
    unchanged; device: where to train, overriding config.device (the runner decides it per executor)."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    keep_freed_buffers()
    t0 = time.perf_counter()
    device = device or resolve_device(config.device)
    data = data or load_fashion_mnist(val_size=config.val_size, split_seed=config.split_seed,
                                      train_size=config.train_size)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    model = seeded_model(config, build or from_config).to(device)
    if config.data_init:  # one batch of 512 training images sets g and b (Salimans & Kingma 2016, sec. 3)
        with torch.no_grad():
            data_dependent_init(model, x_train[:512])
    opt = make_optimizer(config, model.parameters())
    params = [p for p in model.parameters()]
    gen = torch.Generator().manual_seed(config.seed)
    n, bs = len(x_train), config.batch_size
    steps_per_epoch = n // bs  # the last partial batch is dropped (a batch of 1 breaks batch norm)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    eval_at = {round(steps_per_epoch * k / config.evals_per_epoch)
               for k in range(1, config.evals_per_epoch * config.epochs + 1)} | {total}
    hist = History(config=config.to_dict(), steps_per_epoch=steps_per_epoch, device=device)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=f"{config.arch}/{config.norm} seed {config.seed}", leave=False)
    run_loss, run_correct, run_count, run_steps, step = 0.0, 0, 0, 0, 0
    best_state = None  # weights at the lowest validation loss so far (a copy, unless they are the last)
    model.train()
    while step < total:
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(steps_per_epoch):
            idx = perm[i * bs:(i + 1) * bs]
            xb, yb = x_train.index_select(0, idx), y_train.index_select(0, idx)  # a faster gather than x[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.linalg.vector_norm(
                torch.stack(torch._foreach_norm([p.grad for p in params if p.grad is not None])))
            correct = (logits.detach().argmax(1) == yb).sum()
            # one device-to-host copy per step for the three numbers recorded
            loss_v, gnorm_v, correct_v = torch.stack([loss.detach(), grad_norm, correct.to(loss.dtype)]).tolist()
            step += 1
            hist.step_loss.append(loss_v)
            hist.step_grad_norm.append(gnorm_v)
            if not (math.isfinite(loss_v) and math.isfinite(gnorm_v)):
                hist.diverged, hist.diverged_step = True, step
                break
            if config.schedule == "cosine" or config.warmup:
                for group in opt.param_groups:
                    group["lr"] = lr_at(config, step, total)
            opt.step()
            for hook in hooks:
                hook(step, model)
            run_loss += loss_v
            run_correct += int(correct_v)
            run_count += len(yb)
            run_steps += 1
            if bar is not None:
                bar.update()
            if step in eval_at:
                val_loss, val_acc = evaluate(model, x_val, y_val)
                hist.eval_step.append(step)
                hist.eval_epoch.append(step / steps_per_epoch)
                hist.train_loss.append(run_loss / run_steps)
                hist.train_acc.append(run_correct / run_count)
                hist.val_loss.append(val_loss)
                hist.val_acc.append(val_acc)
                if hist.best_step is None or val_loss < min(hist.val_loss[:-1]):
                    hist.best_step = step
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                run_loss, run_correct, run_count, run_steps = 0.0, 0, 0, 0
            if step >= total:
                break
        if hist.diverged:
            break
    if bar is not None:
        bar.close()
    if not hist.diverged:
        x_test, y_test = data.x_test.to(device), data.y_test.to(device)
        hist.test_loss, hist.test_acc = evaluate(model, x_test, y_test)
        if hist.best_step == hist.eval_step[-1]:
            hist.best_test_loss, hist.best_test_acc = hist.test_loss, hist.test_acc
        elif best_state is not None:
            model.load_state_dict(best_state)
            hist.best_test_loss, hist.best_test_acc = evaluate(model, x_test, y_test)
    hist.wall_time = time.perf_counter() - t0
    return hist
