"""revlib.harness.train: recipes, weight-decay groups, training on digits, atomic checkpoints,
exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import revlib
from revlib.harness import data, train


def tiny_net(dropout: float = 0.1) -> nn.Module:
    """A small CNN for 8x8 digits: conv, BN, dropout, a reversible stage, FC on the 4x4 map
    (4,466 parameters)."""
    half = 4

    def f():
        return nn.Sequential(
            nn.BatchNorm2d(half), nn.ReLU(), nn.Conv2d(half, half, 3, padding=1, bias=False)
        )

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(dropout),
        revlib.ReversibleSequence([revlib.AdditiveCoupling(f(), f()) for _ in range(2)]),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny tensors: one thread is as fast, and on a busy 2-core machine several spinning threads
    # are 10x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def loaders(digits, kind: str = "tensor", seed: int = 0):
    train_set, test_set = digits
    test = data.TensorLoader(test_set, 450, shuffle=False, augment=False)
    if kind == "tensor":
        return data.TensorLoader(train_set, 100, seed=seed), test
    # a plain DataLoader whose shuffling and augmentation draw from the global torch RNG
    ds = train_set.subset(range(len(train_set)))
    ds.transform = data.RandomCropFlip(pad=1, flip=False)
    return torch.utils.data.DataLoader(ds, batch_size=100, shuffle=True), test


# ----------------------------------------------------------------- recipes


def test_revnet_schedule_boundaries():
    r = train.recipe("revnet")
    assert (r.iterations, r.batch_size, r.momentum, r.weight_decay, r.smoothness) == (
        80_000,
        100,
        0.9,
        2e-4,
        0.0,
    )
    expect = {0: 0.1, 39_999: 0.1, 40_000: 0.01, 59_999: 0.01, 60_000: 0.001, 79_999: 0.001}
    for step, lr in expect.items():
        assert math.isclose(r.lr_at(step), lr, rel_tol=1e-12), (step, r.lr_at(step))
    c = train.recipe("chang")
    assert c.smoothness == 2e-4 and c.milestones == r.milestones and c.weight_decay == 2e-4


def test_scaled_schedule_keeps_fractions():
    s = train.recipe("revnet", iterations=800)
    assert s.iterations == 800 and s.milestones == (400, 600) and s.batch_size == 100
    assert (
        s.lr_at(399) == 0.1
        and math.isclose(s.lr_at(400), 0.01)
        and math.isclose(s.lr_at(600), 0.001)
    )
    assert train.recipe("chang", iterations=80).milestones == (40, 60)
    assert train.recipe("revnet", batch_size=50).batch_size == 50
    with pytest.raises(ValueError):
        train.recipe("revnet", iterations=0)


# ------------------------------------------------------------ weight decay


class RawKernel(nn.Module):
    """A layer that keeps its convolution kernel as a raw parameter, with a scalar step size."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(4, 4, 3, 3))
        self.h = nn.Parameter(torch.tensor(0.1))

    def forward(self, x):
        return x + self.h * nn.functional.conv2d(x, self.kernel, padding=1)


def test_weight_decay_only_on_conv_and_fc_weights():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=True),
        nn.BatchNorm2d(4),
        RawKernel(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 10),
    )
    decayed, not_decayed = train.decayed_parameter_names(model)
    assert sorted(decayed) == ["0.weight", "2.kernel", "4.weight"]
    assert sorted(not_decayed) == ["0.bias", "1.bias", "1.weight", "2.h", "4.bias"]
    t = train.Trainer(model, train.recipe("revnet"), device="cpu", progress=False)
    groups = {g["name"]: g for g in t.optimizer.param_groups}
    assert groups["decay"]["weight_decay"] == 2e-4 and groups["no_decay"]["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(groups["decay"]["params"]) == ids(
        [model[0].weight, model[2].kernel, model[4].weight]
    )
    assert ids(groups["no_decay"]["params"]) == ids(
        [model[0].bias, model[1].weight, model[1].bias, model[2].h, model[4].bias]
    )


def test_weight_decay_acts_only_on_its_group():
    # With zero data gradient, one SGD step shrinks decayed weights by lr*wd, the rest not at all.
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(train.parameter_groups(model, 0.5), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    conv_w, conv_b, bn_w, bn_b = model.parameters()
    assert torch.allclose(conv_w, before[0] * (1 - 0.1 * 0.5))
    assert (
        torch.equal(conv_b, before[1])
        and torch.equal(bn_w, before[2])
        and torch.equal(bn_b, before[3])
    )


# ---------------------------------------------------------------- training


def test_training_on_digits_lowers_the_loss(digits):
    torch.manual_seed(0)
    model = tiny_net(dropout=0.0)
    tr, te = loaders(digits)
    before = train.evaluate(model, te, "cpu")
    t = train.Trainer(model, train.recipe("revnet", iterations=70), device="cpu", progress=False)
    history = t.fit(tr, te)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5] and history[-1]["step"] == 70
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["test_loss"] < 0.5 * before["loss"]
    assert history[-1]["test_acc"] > 0.85  # chance is 0.1
    assert history[0]["lr"] == 0.1 and math.isclose(history[-1]["lr"], 0.001)
    assert all(row["images_per_s"] > 0 for row in history)


def test_extra_loss_hook_is_called_every_step(digits):
    calls = []

    def penalty(model):
        calls.append(1)
        return 1e-3 * sum((p**2).sum() for p in model.parameters())

    t = train.Trainer(
        tiny_net(),
        train.recipe("revnet", iterations=5),
        device="cpu",
        progress=False,
        extra_loss=penalty,
    )
    t.fit(loaders(digits)[0])
    assert len(calls) == 5


def test_chang_recipe_adds_weight_smoothness_in_the_l2_loss_convention():
    from revlib.core.smoothness import weight_smoothness
    from revlib.models.ode import ODENet

    model = ODENet("hamiltonian", (3, 2), (8, 16), num_classes=10, in_channels=1)
    t = train.Trainer(model, train.recipe("chang", iterations=1), device="cpu", progress=False)
    assert t.extra_loss is not None
    penalty = t.extra_loss(model)
    assert penalty.item() > 0 and penalty.requires_grad
    # rate 2e-4 on tf.nn.l2_loss (half the squared norm) = 1e-4 * sum ||K_j - K_{j+1}||^2
    assert torch.allclose(penalty, 1e-4 * weight_smoothness(model, 1.0))
    assert train.Trainer(model, train.recipe("revnet"), device="cpu").extra_loss is None


def test_set_bn_momentum():
    model = tiny_net()
    train.set_bn_momentum(model, 0.1)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 6 and all(m.momentum == 0.1 for m in bns)


def test_bf16_autocast_on_cpu(digits):
    t = train.Trainer(
        tiny_net(),
        train.recipe("revnet", iterations=3),
        device="cpu",
        progress=False,
        amp="bf16",
        channels_last=True,
    )
    hist = t.fit(*loaders(digits))
    assert math.isfinite(hist[-1]["train_loss"]) and math.isfinite(hist[-1]["test_loss"])
    assert (
        train.Trainer(tiny_net(), device="cpu", amp="auto").amp is None
    )  # auto: no mixed precision on a CPU


def test_fp16_autocast_with_grad_scaler_on_cpu(digits):
    t = train.Trainer(
        tiny_net(), train.recipe("revnet", iterations=3), device="cpu", progress=False, amp="fp16"
    )
    assert isinstance(t.scaler, torch.amp.GradScaler)
    hist = t.fit(*loaders(digits))
    assert math.isfinite(hist[-1]["train_loss"]) and t.scaler.get_scale() > 0
    with pytest.raises(ValueError):
        train.Trainer(tiny_net(), device="cpu", amp="fp8")


def test_progress_bar_and_metrics_files(digits, tmp_path, capsys):
    tr, te = loaders(digits)
    t = train.Trainer(
        tiny_net(),
        train.recipe("revnet", iterations=16),
        device="cpu",
        progress=True,
        metrics_path=tmp_path / "m.csv",
    )
    t.fit(tr, te)
    err = capsys.readouterr().err
    assert "img_s=" in err and "acc=" in err and "loss=" in err
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,train_loss,train_acc,images_per_s") and len(rows) == 3
    train.write_metrics(t.history, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == t.history
    fig = train.plot_history({"tiny": t.history})
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "accuracy"


# -------------------------------------------------------------- checkpoints


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    train.atomic_save({"version": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the session dies during the save

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        train.atomic_save({"version": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    kept = torch.load(path, weights_only=True)
    assert kept["version"] == 1 and torch.equal(kept["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left behind


def _run(digits, kind, iterations, *, stop_at=None, ckpt=None, resume=False, init_seed=0):
    torch.manual_seed(init_seed)
    model = tiny_net()
    tr, te = loaders(digits, kind)
    t = train.Trainer(
        model,
        train.recipe("revnet", iterations=iterations),
        device="cpu",
        progress=False,
        checkpoint_path=ckpt,
    )
    if resume:
        t.resume()
    else:
        train.seed_everything(1)
    t.fit(tr, te, stop_at=stop_at)
    return t


@pytest.mark.parametrize("kind,stop", [("tensor", 23), ("tensor", 28), ("dataloader", 19)])
def test_resume_continues_exactly(digits, tmp_path, kind, stop):
    n = 30  # 14 batches an epoch: stops inside the 2nd epoch (23, 19) or at its end (28)
    straight = _run(digits, kind, n)
    first = _run(digits, kind, n, stop_at=stop, ckpt=tmp_path / "c.pt")
    assert first.step == stop
    # fresh objects, as after a restart: another init and another global RNG state, which the
    # resume overwrites
    torch.manual_seed(999)
    resumed = _run(digits, kind, n, ckpt=tmp_path / "c.pt", resume=True, init_seed=5)
    assert resumed.step == n
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name  # bit for bit, BN running statistics included
    for a, b in zip(
        straight.optimizer.state_dict()["state"].values(),
        resumed.optimizer.state_dict()["state"].values(),
        strict=True,
    ):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    timing = ("images_per_s", "epoch_time_s", "elapsed_s")
    strip = lambda h: [{k: v for k, v in r.items() if k not in timing} for r in h]  # noqa: E731
    assert strip(straight.history) == strip(resumed.history)


def test_resume_needs_the_same_kind_of_loader(digits, tmp_path):
    _run(digits, "tensor", 20, stop_at=5, ckpt=tmp_path / "c.pt")
    t = train.Trainer(
        tiny_net(), train.recipe("revnet", iterations=20), device="cpu", progress=False
    )
    t.resume(tmp_path / "c.pt")
    with pytest.raises(RuntimeError, match="generators"):
        t.fit(loaders(digits, "dataloader")[0])


def test_epoch_state_round_trips_through_a_checkpoint_exactly():
    e = train.EpochState.start([], torch.device("cpu"))
    for loss, correct, n in [(0.1, 3, 4), (1 / 3, 2, 4), (2.5, 0, 1)]:
        e.add(torch.tensor(loss, dtype=torch.float32), torch.tensor(correct), n)
    again = train.EpochState.from_checkpoint(e.to_checkpoint(), torch.device("cpu"))
    assert (again.batches, again.seen, again.start_rng.keys()) == (3, 9, e.start_rng.keys())
    assert again.loss_sum.dtype == torch.float64 and again.loss_sum.item() == e.loss_sum.item()
    assert int(again.correct) == 5 and again.metrics()["train_acc"] == 5 / 9
