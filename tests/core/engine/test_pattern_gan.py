"""A GAN as people write one: spectral norm (the hook-based one) in a reversible
discriminator, a WGAN-GP gradient penalty (double backward: refused in mode "reversible",
with the fixes that work: mode "autograd", or mode "checkpoint", whose recomputation replays
spectral norm's power-iteration vectors), and a generator step through a frozen discriminator."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as nnf
from pattern_helpers import (
    assert_same_buffers,
    assert_same_grads,
    gradients,
    params_after,
    worst,
)
from torch import nn

import revlib

# ---- 2. a GAN: spectral norm in the discriminator, a WGAN-GP gradient penalty ------------------


def _sn(module: nn.Module, spectral: bool) -> nn.Module:
    return nn.utils.spectral_norm(module) if spectral else module


class Discriminator(nn.Module):
    """A spectrally normalised stem, reversible couplings whose F and G are spectrally
    normalised convolutions (the classic hook-based ``nn.utils.spectral_norm``), a head."""

    def __init__(self, spectral: bool = True) -> None:
        super().__init__()

        def half():
            return nn.Sequential(_sn(nn.Conv2d(2, 2, 3, padding=1), spectral), nn.LeakyReLU(0.2))

        self.stem = _sn(nn.Conv2d(1, 4, 3, padding=1), spectral)
        self.body = revlib.ReversibleSequence(
            [revlib.AdditiveCoupling(half(), half()) for _ in range(2)]
        )
        self.head = _sn(nn.Linear(4, 1), spectral)

    def forward(self, x):
        return self.head(self.body(nnf.leaky_relu(self.stem(x), 0.2)).mean(dim=(2, 3)))


class Generator(nn.Module):
    """z to a 1x4x4 image through reversible couplings with BatchNorm (a DCGAN generator)."""

    def __init__(self) -> None:
        super().__init__()

        def half():
            return nn.Sequential(nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))

        self.project = nn.Linear(3, 4 * 4 * 4)
        self.body = revlib.ReversibleSequence(
            [revlib.AdditiveCoupling(half(), half()) for _ in range(2)]
        )
        self.to_image = nn.Conv2d(4, 1, 1)

    def forward(self, z):
        return torch.tanh(self.to_image(self.body(self.project(z).view(-1, 4, 4, 4))))


_G = torch.Generator().manual_seed(1)
REAL = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=_G)
Z = torch.randn(3, 3, dtype=torch.float64, generator=_G)
EPS = torch.rand(3, 1, 1, 1, dtype=torch.float64, generator=_G)


def _gan(spectral: bool = True) -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    return Generator().double(), Discriminator(spectral).double()


def _gradient_penalty(d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    x_hat = (EPS * real + (1 - EPS) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def _d_steps(d_base, mode, steps=2, penalty=False):
    """SGD steps of a WGAN critic, from a copy in ``mode``: two forwards (fake, real) and one
    backward per step; returns (gradients of the first step, buffers after it, the copy)."""
    d = copy.deepcopy(d_base)
    revlib.set_mode(d, mode)
    opt = torch.optim.SGD(d.parameters(), lr=0.05)
    for step in range(steps):
        fake = (REAL.flip(0) * 0.5).requires_grad_(True)  # a generator's output, as a leaf
        real = REAL.clone().requires_grad_(True)
        opt.zero_grad(set_to_none=True)
        loss = d(fake).mean() - d(real).mean()
        if penalty:
            loss = loss + 10 * _gradient_penalty(d, real.detach(), fake.detach())
        loss.backward()
        if step == 0:
            grads = gradients(d, fake=fake, real=real)
            first_buffers = {n: b.clone() for n, b in d.named_buffers()}
        opt.step()
    return grads, first_buffers, d


def test_discriminator_steps_with_spectral_norm_equal_autograd_including_weight_u():
    """Two forwards (fake, real), one backward: gradients of the parameters and of both inputs,
    and the power-iteration buffers (weight_u, weight_v: advanced once per forward) equal to the
    bit; after a second SGD step, the parameters and buffers to relative 1e-9 (the first step's
    round-off moves the second power iteration by as much)."""
    _, d = _gan()
    want, buffers_ref, d_ref = _d_steps(d, "autograd")
    got, buffers, d_rev = _d_steps(d, "reversible")
    assert_same_grads(got, want)
    assert buffers.keys() == buffers_ref.keys()
    assert all(torch.equal(buffers[n], b) for n, b in buffers_ref.items())
    u = "body.blocks.0.F.0.weight_u"
    assert not torch.equal(buffers_ref[u], dict(d.named_buffers())[u])  # it did advance
    assert_same_grads(params_after(d_rev), params_after(d_ref))
    assert_same_grads(dict(d_rev.named_buffers()), dict(d_ref.named_buffers()))


def test_control_torch_checkpoint_around_the_body_advances_weight_u_twice():
    """The comparison can fail: ``torch.utils.checkpoint`` around the discriminator's body
    (mode "autograd" inside) reruns spectral norm's power iteration in its recomputation."""

    class Checkpointed(Discriminator):
        def forward(self, x):
            h = nnf.leaky_relu(self.stem(x), 0.2)
            h = torch.utils.checkpoint.checkpoint(self.body, h, use_reentrant=False)
            return self.head(h.mean(dim=(2, 3)))

    _, d = _gan()
    checkpointed = Checkpointed().double()
    checkpointed.load_state_dict(d.state_dict())
    want, buffers_ref, _ = _d_steps(d, "autograd", steps=1)
    got, buffers, _ = _d_steps(checkpointed, "autograd", steps=1)
    assert worst(got, want) > 1e-3
    assert not all(torch.equal(buffers[n], b) for n, b in buffers_ref.items())


def test_generator_step_through_a_frozen_reversible_discriminator_equals_autograd():
    """The G step: D's parameters frozen, the gradient flows through D's reversible chain into
    G's (BatchNorm statistics and D's power iteration updated once)."""

    def g_step(mode):
        g, d = _gan()
        revlib.set_mode(g, mode)
        revlib.set_mode(d, mode)
        d.requires_grad_(False)
        z = Z.clone().requires_grad_(True)
        (-d(g(z)).mean()).backward()
        return gradients(g, z=z), g, d

    want, g_ref, d_ref = g_step("autograd")
    got, g_rev, d_rev = g_step("reversible")
    assert_same_grads(got, want)
    assert_same_buffers(g_rev, g_ref)
    assert_same_buffers(d_rev, d_ref)


def test_gradient_penalty_through_a_reversible_discriminator_is_refused_naming_the_fix():
    """WGAN-GP differentiates D's input gradient (double backward), which mode "reversible"
    refuses, as ReversibleSequence's docstring says, naming the modes that support it."""
    _, d = _gan()
    with pytest.raises(
        RuntimeError, match=r"double backward \(create_graph=True\).*mode='autograd'"
    ):
        _d_steps(d, "reversible", steps=1, penalty=True)


def test_the_fix_a_wgan_gp_iteration_with_d_in_mode_autograd_and_a_reversible_generator():
    """The message's fix: D in mode "autograd" (its penalty needs the graph), G reversible; one
    critic step with the penalty and one generator step equal an all-autograd iteration."""

    def iteration(g_mode):
        g, d = _gan()
        revlib.set_mode(g, g_mode)
        revlib.set_mode(d, "autograd")
        opt_d = torch.optim.SGD(d.parameters(), lr=0.05)
        opt_g = torch.optim.SGD(g.parameters(), lr=0.05)
        fake = g(Z).detach()
        loss_d = d(fake).mean() - d(REAL).mean() + 10 * _gradient_penalty(d, REAL, fake)
        loss_d.backward()
        opt_d.step()
        d.requires_grad_(False)
        (-d(g(Z)).mean()).backward()
        grads = gradients(g)
        opt_g.step()
        return grads, g, d

    want, g_ref, d_ref = iteration("autograd")
    got, g_rev, d_rev = iteration("reversible")
    assert_same_grads(got, want)
    assert_same_grads(params_after(g_rev), params_after(g_ref))
    assert_same_buffers(g_rev, g_ref)
    assert_same_buffers(d_rev, d_ref)


def test_gradient_penalty_in_mode_checkpoint_without_spectral_norm_equals_autograd():
    """The other mode the message names runs the double backward (no spectral norm here)."""
    _, d = _gan(spectral=False)
    want, _, d_ref = _d_steps(d, "autograd", penalty=True)
    got, _, d_ckpt = _d_steps(d, "checkpoint", penalty=True)
    assert_same_grads(got, want)
    assert_same_grads(params_after(d_ckpt), params_after(d_ref))


@pytest.mark.parametrize("penalty", [False, True], ids=["plain D step", "with the penalty"])
def test_spectral_norm_discriminator_in_mode_checkpoint_equals_autograd(penalty):
    """A user who follows the refusal to mode "checkpoint" with a spectrally normalised D: one
    critic step, with and without the penalty; gradients and weight_u as in autograd."""
    _, d = _gan()
    want, buffers_ref, _ = _d_steps(d, "autograd", steps=1, penalty=penalty)
    got, buffers, _ = _d_steps(d, "checkpoint", steps=1, penalty=penalty)
    assert_same_grads(got, want)
    assert all(torch.equal(buffers[n], b) for n, b in buffers_ref.items())


def test_control_without_replaying_the_buffers_checkpoint_steps_the_power_iteration_twice(
    monkeypatch,
):
    from revlib.core.replay import buffers

    monkeypatch.setattr(buffers.BufferWatch, "record", lambda self: None)
    _, d = _gan()
    want, _, _ = _d_steps(d, "autograd", steps=1)
    got, _, _ = _d_steps(d, "checkpoint", steps=1)
    assert worst(got, want) > 1e-3
