"""revlib.core.stability: Jacobians, eigenvalues, perturbation growth, Lyapunov exponents."""

from __future__ import annotations

import math

import pytest
import torch

from revlib import stability as S
from revlib.core.ode import AntisymmetricSigma, HamiltonianBlock, LeapfrogBlock

# Haber and Ruthotto's toy: dY/dt = tanh(K Y), 10 layers of forward Euler with h = 0.1
K_PLUS = torch.tensor([[2.0, -2.0], [0.0, 2.0]], dtype=torch.float64)
K_MINUS = torch.tensor([[-2.0, 0.0], [2.0, -2.0]], dtype=torch.float64)
K_ZERO = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)


def euler_layer(K: torch.Tensor, h: float = 0.1):
    return lambda y: y + h * torch.tanh(y @ K.T)


def test_jacobian_of_a_linear_map_is_its_matrix():
    A = torch.randn(5, 5, dtype=torch.float64)
    J = S.jacobian(lambda v: v @ A.T, torch.randn(1, 5, dtype=torch.float64))
    assert torch.allclose(J, A)
    with pytest.raises(ValueError, match="keep the number"):
        S.jacobian(lambda v: v[:, :2], torch.randn(1, 5))


def test_toy_jacobians_at_the_origin():
    y0 = torch.zeros(1, 2, dtype=torch.float64)
    rhs = lambda K: lambda y: torch.tanh(y @ K.T)  # noqa: E731
    assert S.max_real_part(rhs(K_PLUS), y0) == pytest.approx(2.0)
    assert S.max_real_part(rhs(K_MINUS), y0) == pytest.approx(-2.0)
    ev = S.eigenvalues(rhs(K_ZERO), y0)
    assert torch.allclose(ev.real, torch.zeros(2, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(ev.imag.abs(), torch.ones(2, dtype=torch.float64))


def test_toy_perturbations_grow_shrink_and_rotate():
    y1 = torch.tensor([[0.1, 0.1]], dtype=torch.float64)
    plus = S.perturbation_growth(euler_layer(K_PLUS), y1, depth=10)
    minus = S.perturbation_growth(euler_layer(K_MINUS), y1, depth=10)
    zero = S.perturbation_growth(
        euler_layer(K_ZERO), y1, depth=10, direction=torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    )
    assert plus.shape == (11,) and plus[0] == 1.0
    assert plus[-1] > 2.5 and bool((plus[1:] > plus[:-1]).all())
    assert minus[-1] < 0.5
    assert abs(zero[-1] - 1) < 0.06  # forward Euler of a rotation grows only by (1 + h^2)^(N/2)


def test_lyapunov_exponent_of_a_linear_euler_map():
    a, h, n = 0.7, 0.1, 20
    layer = lambda y: y + h * a * y  # noqa: E731
    lam = S.lyapunov_exponent(layer, torch.randn(1, 3, dtype=torch.float64), depth=n, h=h)
    assert lam == pytest.approx(math.log(1 + h * a) / h, rel=1e-12)
    lam_fd = S.lyapunov_exponent(
        layer, torch.randn(1, 3, dtype=torch.float64), depth=n, h=h, eps=1e-7
    )
    assert lam_fd == pytest.approx(lam, rel=1e-6)


def test_growth_through_a_list_of_layers_and_depth_checks():
    blocks = [HamiltonianBlock(4, kernel_size=None, activation="tanh").double() for _ in range(5)]
    x = torch.randn(1, 4, dtype=torch.float64)
    d = torch.randn(1, 4, dtype=torch.float64)
    exact = S.perturbation_growth(blocks, x, direction=d)
    fd = S.perturbation_growth(blocks, x, direction=d, eps=1e-7)
    assert exact.shape == (6,)
    assert torch.allclose(exact, fd, rtol=1e-5)
    with pytest.raises(ValueError, match="exceeds"):
        S.perturbation_growth(blocks, x, depth=9)
    with pytest.raises(ValueError, match="give depth"):
        S.perturbation_growth(blocks[0], x)


def conv_state(channels: int = 8, size: int = 5) -> torch.Tensor:
    return torch.randn(1, channels, size, size, dtype=torch.float64)


def with_random_biases(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    return module


def test_hamiltonian_jacobian_eigenvalues_are_purely_imaginary():
    block = with_random_biases(HamiltonianBlock(8, kernel_size=3, activation="tanh").double())
    x = conv_state()
    ev = S.eigenvalues(block.rhs, x)
    rho = ev.abs().max().item()
    assert ev.numel() == 200 and rho > 0.5
    assert ev.real.abs().max().item() < 1e-12 * rho


def test_hamiltonian_with_relu_imaginary_except_the_defective_zero_eigenvalue():
    """ReLU zeros rows of D; the eigenvalue 0 then has Jordan blocks, which eigvals resolves to
    ~sqrt(eps)."""
    block = with_random_biases(HamiltonianBlock(8, kernel_size=3, activation="relu").double())
    ev = S.eigenvalues(block.rhs, conv_state())
    rho = ev.abs().max().item()
    away_from_zero = ev[ev.abs() > 1e-6 * rho]
    assert away_from_zero.numel() > 20
    assert away_from_zero.real.abs().max().item() < 1e-12 * rho
    assert ev.real.abs().max().item() < 1e-6 * rho


def test_antisymmetric_and_leapfrog_jacobians_are_purely_imaginary_but_a_plain_layer_is_not():
    x = conv_state()
    anti = with_random_biases(AntisymmetricSigma(8, activation="tanh").double())
    leap = with_random_biases(LeapfrogBlock(4, activation="tanh").double())
    for fn in (anti, leap.rhs):
        ev = S.eigenvalues(fn, x)
        assert ev.real.abs().max().item() < 1e-12 * ev.abs().max().item()
    plain = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Tanh()).double()
    assert S.max_real_part(plain, x) > 0.1
