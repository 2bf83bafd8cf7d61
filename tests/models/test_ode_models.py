"""Chang et al.'s networks: parameter counts beside the paper's table, layout, modes, memory;
smoothness decay."""

from __future__ import annotations

import copy
from itertools import pairwise

import pytest
import torch
from helpers import max_rel_error, run_step

import revlib
from revlib.core.memory import saved_tensor_bytes
from revlib.core.ode import HamiltonianBlock, LeapfrogBlock, MidpointBlock
from revlib.core.smoothness import kernel_stages, weight_smoothness
from revlib.models import count_parameters
from revlib.models import ode as M

# Our exact counts at 10 and 100 classes (transition inside the first block, as in Chang et al.'s
# code).
OURS = {
    "hamiltonian74": (428_538, 438_708),
    "hamiltonian218": (1_679_114, 1_690_724),
    "hamiltonian1202": (9_632_458, 9_644_068),
    "midpoint26": (535_258, 545_428),
    "midpoint62": (1_801_738, 1_813_348),
    "leapfrog26": (535_258, 545_428),
    "leapfrog62": (1_801_738, 1_813_348),
}


def count(name: str, **kwargs) -> int:
    with torch.device("meta"):  # shapes only: fast, no memory
        return count_parameters(getattr(M, name)(**kwargs))


@pytest.mark.parametrize("name", OURS)
def test_parameter_counts(name):
    ours10, ours100 = OURS[name]
    assert count(name) == ours10
    assert count(name, num_classes=100) == ours100
    chang10, chang100 = M.CHANG_PARAMS_M[name]
    if name in ("hamiltonian74", "hamiltonian218"):
        # equal to Chang et al.'s table at the precision it prints
        assert round(ours10 / 1e6, 2) == chang10 and round(ours100 / 1e6, 2) == chang100
    elif name == "hamiltonian1202":
        # the table's 9.70 M is the layout with every block at its stage's width
        assert round(ours10 / 1e6, 2) == 9.63
        assert round(count(name, transition="between_stages") / 1e6, 2) == chang10
    else:
        # Midpoint/Leapfrog: one width x width 3x3 kernel and a bias per block; ours are larger
        assert ours10 > chang10 * 1e6 and ours100 > chang100 * 1e6


def test_count_is_the_sum_of_its_parts():
    """Hamiltonian-74 by hand: kernels, biases, stem (conv + BN), final BN, FC."""
    k = lambda c: 9 * (c // 2) ** 2  # noqa: E731  one half-width 3x3 kernel
    kernels = 2 * (7 * k(32) + 6 * k(64) + 5 * k(112))  # 6 + 1 blocks at 32, 5 + 1 at 64, 5 at 112
    biases = 7 * 32 + 6 * 64 + 5 * 112
    total = kernels + biases + (27 * 32 + 2 * 32) + 2 * 112 + (112 * 10 + 10)
    assert total == OURS["hamiltonian74"][0]


@pytest.mark.parametrize("name", ["hamiltonian74", "midpoint26", "leapfrog26"])
def test_named_models_run_on_8x8_grey_images(name):
    model = getattr(M, name)(num_classes=10, in_channels=1)
    x = torch.randn(3, 1, 8, 8)
    out = model(x)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def small(scheme: str, units=(2, 3, 2), mode="reversible", **kw) -> M.ODENet:
    return M.ODENet(scheme, units, (8, 16, 24), num_classes=5, in_channels=2, mode=mode, **kw)


@pytest.mark.parametrize("scheme", ["hamiltonian", "midpoint", "leapfrog"])
def test_layout_of_stages_and_sequences(scheme):
    model = small(scheme)
    block = {"hamiltonian": HamiltonianBlock, "midpoint": MidpointBlock, "leapfrog": LeapfrogBlock}[
        scheme
    ]
    stages = model.stages()
    assert [len(s) for s in stages] == [2, 3, 2]
    assert all(isinstance(b, block) for s in stages for b in s)
    # the first block of stages 2 and 3 runs at the previous width, in the previous sequence
    assert [len(s.blocks) for s in model.sequences] == [3, 3, 1]
    assert stages[1][0] is model.sequences[0].blocks[2]
    assert stages[2][0] is model.sequences[1].blocks[2]
    between = small(scheme, transition="between_stages")
    assert [len(s.blocks) for s in between.sequences] == [2, 3, 2]


@pytest.mark.parametrize("scheme", ["hamiltonian", "midpoint", "leapfrog"])
def test_modes_give_the_same_outputs_gradients_and_bn_statistics(scheme):
    base = small(scheme)
    x = torch.randn(4, 2, 9, 9, requires_grad=True)  # odd size: pooling rounds up
    runs = {}
    for mode in revlib.MODES:
        model = copy.deepcopy(base)
        model.mode = mode
        assert model.mode == mode
        runs[mode] = (run_step(model, x), model.stem[1].running_mean.clone())
    (y_ref, dx_ref, dp_ref), stats_ref = runs["autograd"]
    for mode in ("reversible", "checkpoint"):
        (y, dx, dp), stats = runs[mode]
        assert max_rel_error(y, y_ref) < 1e-5
        assert max_rel_error(dx, dx_ref) < 1e-4
        for a, b in zip(dp, dp_ref, strict=True):
            assert max_rel_error(a, b) < 1e-4
        assert torch.equal(stats, stats_ref)


@pytest.mark.parametrize("scheme", ["hamiltonian", "midpoint", "leapfrog"])
def test_network_activation_memory_is_flat_in_depth(scheme):
    x = torch.randn(2, 2, 8, 8)
    rev = [saved_tensor_bytes(small(scheme, units=(n, n, n)), x) for n in (2, 6)]
    auto = [saved_tensor_bytes(small(scheme, units=(n, n, n), mode="autograd"), x) for n in (2, 6)]
    assert rev[0] == rev[1]
    assert auto[1] > 2 * auto[0]


def test_two_step_networks_carry_the_pair_through_transitions():
    model = small("leapfrog")
    x = torch.randn(2, 2, 8, 8)
    pair = model.start(model.stem(x))
    assert pair.shape[1] == 16  # (Y_{-1}, Y_0), 8 channels each
    out = model.transitions[0](model.sequences[0](pair))
    assert out.shape == (2, 32, 4, 4)  # each state pooled and padded 8 -> 16
    assert torch.equal(out[:, :4], torch.zeros_like(out[:, :4]))  # symmetric zero padding
    assert model.features(x).shape == (2, 24, 2, 2)


# --- weight smoothness decay ------------------------------------------------------------------


def dense_hamiltonian(k1: float, k2: float) -> HamiltonianBlock:
    block = HamiltonianBlock(4, kernel_size=None)
    with torch.no_grad():
        block.F.fn.weight.fill_(k1)
        block.G.fn.weight.fill_(k2)
    return block


def test_smoothness_on_hand_made_weights():
    stage = [dense_hamiltonian(0.0, 1.0), dense_hamiltonian(1.0, 1.0), dense_hamiltonian(3.0, -1.0)]
    # K1: 0 -> 1 -> 3, K2: 1 -> 1 -> -1; each kernel has 2 x 2 = 4 entries
    expected = 4 * ((1 - 0) ** 2 + (3 - 1) ** 2) + 4 * (0**2 + 2**2)
    assert weight_smoothness([stage], rate=1.0).item() == pytest.approx(expected)
    assert weight_smoothness([stage], rate=2e-4).item() == pytest.approx(2e-4 * expected)
    assert weight_smoothness([stage], rate=2e-4, h=0.1).item() == pytest.approx(2e-3 * expected)
    # blocks of different stages are not compared
    assert weight_smoothness([stage[:1], stage[1:2], stage[2:]], rate=1.0).item() == 0.0


def test_smoothness_gradient_is_a_discrete_laplacian_in_depth():
    torch.manual_seed(0)
    stage = [HamiltonianBlock(4, kernel_size=3) for _ in range(4)]
    weight_smoothness([stage], rate=0.5).backward()
    K = [b.F.fn.weight for b in stage]
    # dR/dK_j = 2 rate (2 K_j - K_{j-1} - K_{j+1}) inside, 2 rate (K_0 - K_1) at the ends
    assert torch.allclose(K[1].grad, 2 * 0.5 * (2 * K[1] - K[0] - K[2]), atol=1e-6)
    assert torch.allclose(K[0].grad, 2 * 0.5 * (K[0] - K[1]), atol=1e-6)
    assert stage[0].F.fn.bias.grad is None  # biases are not penalised


def test_smoothness_on_models_pairs_within_stages_only():
    model = small("hamiltonian", units=(2, 2, 2))
    stages = kernel_stages(model)
    assert [len(s) for s in stages] == [2, 2, 2]
    manual = sum(
        (a.kernels()[k] - b.kernels()[k]).pow(2).sum()
        for s in stages
        for a, b in pairwise(s)
        for k in ("K1", "K2")
        if a.kernels()[k].shape == b.kernels()[k].shape
    )
    assert weight_smoothness(model, rate=1.0).item() == pytest.approx(manual.item(), rel=1e-6)
    # stage 2's blocks run at widths 8 and 16: their kernels differ in shape and are skipped
    s2 = stages[1]
    assert s2[0].kernels()["K1"].shape != s2[1].kernels()["K1"].shape


def test_smoothness_on_other_blocks_uses_their_weight_matrices():
    seq = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)) for _ in range(3)]
    )
    ws = [[b.F.weight, b.G.weight] for b in seq.blocks]
    manual = sum((ws[j][i] - ws[j + 1][i]).pow(2).sum() for j in range(2) for i in range(2))
    assert weight_smoothness(seq, rate=1.0).item() == pytest.approx(manual.item(), rel=1e-6)


def test_a_bad_mode_is_refused_when_the_model_is_built():
    with pytest.raises(ValueError, match="mode must be one of"):
        small("hamiltonian", mode="fast")
