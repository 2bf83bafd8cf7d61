"""Hamiltonian, Midpoint and Leapfrog blocks: formulas, inverses, gradients, memory, first-step
rule."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as nnf
from helpers import max_rel_error, run_step

import revlib
from revlib.core.memory import saved_tensor_bytes
from revlib.core.ode import (
    AntisymmetricSigma,
    HamiltonianBlock,
    KTransposeSigmaK,
    LeapfrogBlock,
    MidpointBlock,
    end_pair,
    start_pair,
)

# name -> (make one block, input shape); each block's input has 8 channels (or 4 features).
BLOCKS = {
    "hamiltonian": (lambda **kw: HamiltonianBlock(8, h=0.3, **kw), (3, 8, 5, 5)),
    "midpoint": (lambda **kw: MidpointBlock(4, h=0.3, **kw), (3, 8, 5, 5)),
    "leapfrog": (lambda **kw: LeapfrogBlock(4, h=0.3, **kw), (3, 8, 5, 5)),
    "hamiltonian-dense": (
        lambda **kw: HamiltonianBlock(
            4, kernel_size=None, hidden=6, h=0.3, activation="tanh", **kw
        ),
        (7, 4),
    ),
    "midpoint-dense": (
        lambda **kw: MidpointBlock(2, kernel_size=None, h=0.3, activation="tanh", **kw),
        (7, 4),
    ),
    "leapfrog-dense": (
        lambda **kw: LeapfrogBlock(2, kernel_size=None, h=0.3, activation="tanh", **kw),
        (7, 4),
    ),
}


def stack(name: str, depth: int, mode: str = "reversible", **kw) -> revlib.ReversibleSequence:
    make, _ = BLOCKS[name]
    return revlib.ReversibleSequence([make(**kw) for _ in range(depth)], mode=mode)


def randomise_biases(module: torch.nn.Module) -> None:
    """Nonzero biases, so that a test cannot pass because b = 0."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)


# --- the formulas ---------------------------------------------------------------------------


def test_k_transpose_is_the_adjoint_of_k():
    f = KTransposeSigmaK(4, hidden=6, kernel_size=3).double()
    x = torch.randn(2, 4, 5, 7, dtype=torch.float64)
    u = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    kx = nnf.conv2d(x, f.weight, padding=1)
    assert torch.allclose((kx * u).sum(), (x * f.transpose(u)).sum(), rtol=1e-12)


def test_antisymmetric_operator_is_antisymmetric():
    f = AntisymmetricSigma(4, kernel_size=3, activation="identity", bias=False).double()
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    # <x, (K - K^T) x> = 0 for every x
    assert abs((x * f.inner(x)).sum().item()) < 1e-12 * x.pow(2).sum().item()


def test_hamiltonian_block_is_the_verlet_step():
    block = HamiltonianBlock(8, h=0.3).double()
    randomise_biases(block)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    y0, z0 = x.chunk(2, dim=1)
    K1, b1 = block.F.fn.weight, block.F.fn.bias
    K2, b2 = block.G.fn.weight, block.G.fn.bias
    y1 = y0 + 0.3 * nnf.conv_transpose2d(
        torch.relu(nnf.conv2d(z0, K1, b1, padding=1)), K1, padding=1
    )
    z1 = z0 - 0.3 * nnf.conv_transpose2d(
        torch.relu(nnf.conv2d(y1, K2, b2, padding=1)), K2, padding=1
    )
    assert torch.allclose(block(x), torch.cat([y1, z1], dim=1), atol=1e-13)


def test_midpoint_and_leapfrog_formulas_on_the_pair():
    prev, cur = torch.randn(2, 2, 4, 5, 5, dtype=torch.float64)
    x = torch.cat([prev, cur], dim=1)
    mid = MidpointBlock(4, h=0.3).double()
    leap = LeapfrogBlock(4, h=0.3).double()
    randomise_biases(mid)
    randomise_biases(leap)
    y = mid(x)
    assert torch.equal(y[:, :4], cur)
    assert torch.allclose(y[:, 4:], prev + 2 * 0.3 * mid.F.fn(cur), atol=1e-13)
    y = leap(x)
    assert torch.equal(y[:, :4], cur)
    assert torch.allclose(y[:, 4:], 2 * cur - prev - 0.3**2 * leap.F.fn(cur), atol=1e-13)


def test_block_shapes_and_step_size_are_checked():
    with pytest.raises(ValueError, match="even"):
        HamiltonianBlock(7)
    with pytest.raises(ValueError, match="positive"):
        LeapfrogBlock(4, h=0.0)
    with pytest.raises(ValueError, match="odd"):
        KTransposeSigmaK(4, kernel_size=2)
    with pytest.raises(ValueError, match="odd number of channels"):
        MidpointBlock(4)(torch.randn(1, 9, 4, 4))


# --- inverses ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BLOCKS)
def test_inverse_reconstructs_the_input(name):
    _, shape = BLOCKS[name]
    seq = stack(name, 6).double()
    randomise_biases(seq)
    x = torch.randn(shape, dtype=torch.float64)
    assert revlib.check_inverse(seq, x) < 1e-12
    assert revlib.check_inverse(seq.blocks[0], x) < 1e-13
    # and the inverse really undoes the block: a wrong sign would leave an O(h) error
    y = seq.blocks[0](x)
    assert (y - x).abs().max() > 1e-3


# --- gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("learn_h", [False, True])
def test_gradients_equal_autograd(name, learn_h):
    _, shape = BLOCKS[name]
    base = stack(name, 4, learn_h=learn_h)
    randomise_biases(base)
    x = torch.randn(shape, requires_grad=True)
    results = {}
    for mode in revlib.MODES:
        model = copy.deepcopy(base)
        model.mode = mode
        results[mode] = run_step(model, x)
    y_ref, dx_ref, dp_ref = results["autograd"]
    assert len(dp_ref) == sum(1 for _ in base.parameters())
    for mode in ("reversible", "checkpoint"):
        y, dx, dp = results[mode]
        assert max_rel_error(y, y_ref) < 1e-6
        assert max_rel_error(dx, dx_ref) < 1e-5
        for a, b in zip(dp, dp_ref, strict=True):
            assert max_rel_error(a, b) < 1e-5
    if (
        learn_h
    ):  # the step sizes are parameters, one per block, and get a nonzero gradient in every mode
        h_ids = {id(b.h) for b in base.blocks}
        assert len(h_ids) == len(base.blocks)
        at = [i for i, p in enumerate(base.parameters()) if id(p) in h_ids]
        assert len(at) == len(base.blocks)
        for mode in revlib.MODES:
            assert all(
                results[mode][2][i] is not None and results[mode][2][i].abs() > 0 for i in at
            )


@pytest.mark.parametrize("name", ["hamiltonian", "leapfrog", "midpoint"])
def test_gradcheck_float64_reversible(name):
    make, _ = BLOCKS[name]
    seq = revlib.ReversibleSequence([make(learn_h=True), make(learn_h=True)]).double()
    randomise_biases(seq)
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    # the input gradient against finite differences ...
    assert torch.autograd.gradcheck(seq, (x,), eps=1e-6, atol=1e-7, fast_mode=True)
    # ... and every parameter gradient (kernels, biases, step sizes) against autograd, to round-off
    params = list(seq.parameters())
    grads = torch.autograd.grad((seq(x) ** 2).sum(), params)
    ref = copy.deepcopy(seq)
    ref.mode = "autograd"
    ref_grads = torch.autograd.grad((ref(x) ** 2).sum(), list(ref.parameters()))
    assert len(grads) == len(ref_grads) == 2 * (5 if name == "hamiltonian" else 3)
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


# --- memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hamiltonian", "midpoint", "leapfrog"])
def test_saved_bytes_flat_with_depth_in_reversible_mode(name):
    _, shape = BLOCKS[name]
    x = torch.randn(shape, requires_grad=True)
    rev = [saved_tensor_bytes(stack(name, d), x) for d in (2, 16)]
    auto = [saved_tensor_bytes(stack(name, d, mode="autograd"), x) for d in (2, 16)]
    assert rev[0] == rev[1] == x.numel() * 4  # only the chain's output
    assert auto[1] > 6 * auto[0] > 0


# --- the first-step rule --------------------------------------------------------------------


def test_first_step_rule_duplicates_and_end_takes_the_newest_state():
    y0 = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    pair = start_pair(y0)
    assert pair.shape == (2, 8, 5, 5)
    assert torch.equal(pair[:, :4], y0) and torch.equal(pair[:, 4:], y0)
    assert torch.equal(end_pair(pair), y0)

    leap = LeapfrogBlock(4, h=0.3).double()
    mid = MidpointBlock(4, h=0.3).double()
    randomise_biases(leap)
    randomise_biases(mid)
    # Leapfrog from Y_{-1} = Y_0: zero initial velocity, Y_1 = Y_0 - h^2 K^T sigma(K Y_0 + b)
    assert torch.allclose(end_pair(leap(pair)), y0 - 0.09 * leap.F.fn(y0), atol=1e-13)
    # Midpoint from Y_{-1} = Y_0: a forward Euler step of size 2h
    assert torch.allclose(end_pair(mid(pair)), y0 + 0.6 * mid.F.fn(y0), atol=1e-13)


@pytest.mark.parametrize("name", ["midpoint", "leapfrog"])
def test_inverse_of_a_stack_returns_the_duplicated_start(name):
    seq = stack(name, 10).double()
    randomise_biases(seq)
    y0 = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    back = seq.inverse(seq(start_pair(y0)))
    prev, cur = back.chunk(2, dim=1)
    assert (prev - cur).abs().max() < 1e-11  # Y_{-1} = Y_0 comes back
    assert (cur - y0).abs().max() < 1e-11


def test_kernel_init_is_normal_truncated_at_two_std():
    # Chang et al.'s initialisation: std sqrt(2 / (k*k*C_out)), draws cut at two standard
    # deviations;
    # a normal distribution truncated at +-2 sigma has standard deviation 0.8796 sigma.
    torch.manual_seed(0)
    weight = KTransposeSigmaK(32, hidden=64, kernel_size=3).weight.detach()
    sigma = (2.0 / (64 * 9)) ** 0.5
    assert weight.abs().max() <= 2 * sigma
    assert abs(weight.std().item() / sigma - 0.8796) < 0.02
    with torch.device("meta"):  # shapes only: no draws
        assert KTransposeSigmaK(32, hidden=64).weight.is_meta
