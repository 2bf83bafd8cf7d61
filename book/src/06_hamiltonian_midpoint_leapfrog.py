# %% [markdown]
# (ch-hamiltonian)=
# # Hamiltonian, Midpoint and Leapfrog networks
#
# {ref}`ch-ode` read a residual network as an ODE and asked which ODEs, and which
# integrators, keep the forward propagation stable. {cite:t}`chang2018reversible`
# add a second requirement: the integrator should be
# **reversible**, so that, as in a RevNet, every block's input can be recomputed
# from its output and the backward pass stores no activations. Three
# discretisations have both properties, and this chapter builds them in
# `revlib.core.ode`, checks their inverses in three precisions, measures their memory,
# assembles Chang et al.'s networks (`revlib.models`) and compares their
# parameter counts with the paper's table, trains a small Hamiltonian network on a
# 2-D toy problem, and explains Chang et al.'s weight smoothness decay.
#
# No maintained PyTorch library implements the Midpoint and Leapfrog networks with
# memory-saving backprop (Chang et al.'s own code is TensorFlow and has only the
# Hamiltonian network); the blocks below run in `revlib.ReversibleSequence` like
# any coupling.

# %%
import copy
import inspect
import math

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display
from torch import nn

import revlib
from revlib import ode
from revlib.core.memory import saved_tensor_bytes
from revlib.core.smoothness import weight_smoothness
from revlib.harness.figures import show_table
from revlib.harness.notebook import glue
from revlib.harness.schematics import draw_hamiltonian_block, draw_two_step_coupling
from revlib.models import count_parameters
from revlib.models import ode as chang

torch.set_num_threads(1)  # float64 results identical from run to run
_ = torch.manual_seed(0)

# %% [markdown]
# ## Three reversible discretisations
#
# **Two-layer Hamiltonian network.** Split the channels into halves $Y$ and $Z$ and
# integrate the Hamiltonian-type system
# $\dot Y = K_1^\top \sigma(K_1 Z + b_1)$, $\dot Z = -K_2^\top \sigma(K_2 Y + b_2)$
# with what Chang et al. call the Verlet method, and numerical analysts the
# symplectic Euler method (update $Y$ with the old $Z$, then $Z$ with the new $Y$;
# read on grids staggered by half a step it is Störmer–Verlet, see
# {ref}`ch-ode`). We keep the name "Verlet" for it:
#
# $$
# Y_{j+1} = Y_j + h\, K_{j,1}^\top \sigma(K_{j,1} Z_j + b_{j,1}), \qquad
# Z_{j+1} = Z_j - h\, K_{j,2}^\top \sigma(K_{j,2} Y_{j+1} + b_{j,2}).
# $$
#
# Undoing the two updates in reverse order gives the inverse,
# $Z_j = Z_{j+1} + h K_{j,2}^\top \sigma(K_{j,2} Y_{j+1} + b_{j,2})$, then
# $Y_j = Y_{j+1} - h K_{j,1}^\top \sigma(K_{j,1} Z_j + b_{j,1})$. This *is* a RevNet
# coupling {eq}`eq-revnet-forward` with $F = h K_1^\top\sigma(K_1 \cdot + b_1)$ and
# $G = -h K_2^\top\sigma(K_2\cdot + b_2)$, so `HamiltonianBlock` is an
# `AdditiveCoupling` and inherits its one-evaluation backward step. $K$ and
# $K^\top$ share one weight: a convolution and a transposed convolution with the
# same kernel (`KTransposeSigmaK`), which is exactly the convolution's adjoint
# ({numref}`fig-hamiltonian-block`). As in Chang et al.'s formula, each
# sub-function has one bias and no BatchNorm (a BatchNorm inside, with its batch
# statistics and learned scales, would in general break the structure
# $A = K^\top D K$ that the proof in {ref}`ch-ode` relies on). Their code held
# more than one version of this block; {ref}`sec-which-hamiltonian` compares
# them with the published parameter counts.

# %% tags=["remove-output"]
fig = draw_hamiltonian_block()
glue("fig_hamiltonian_block", fig, display=False)
plt.show()

# %% [markdown]
# ```{glue:figure} fig_hamiltonian_block
# :name: fig-hamiltonian-block
#
# The two-layer Hamiltonian block. F takes $Z_j$ through the kernel $K_1$, the
# activation with bias $b_1$, the transposed kernel $K_1^\top$ (the same weights)
# and the step $h$, and is added to $Y_j$; G does the same with $K_2$ on the
# *new* $Y_{j+1}$ and is subtracted from $Z_j$. Undoing the two updates in reverse
# order inverts the block.
# ```
#
#
# **Midpoint network.** The midpoint rule for $\dot Y = F(Y)$ is a *two-step*
# scheme, $Y_{j+1} = Y_{j-1} + 2h\, F(Y_j)$, inverted by
# $Y_{j-1} = Y_{j+1} - 2h\, F(Y_j)$. It is stable only when the Jacobian's
# eigenvalues are (close to) imaginary (below), so for $F$ we choose
# {cite:t}`haber2017stable`'s antisymmetric layer $\sigma((K - K^\top) Y + b)$ of
# {ref}`ch-ode`, with $\sigma$ = ReLU as in the rest of the chapter: a right-hand
# side with imaginary Jacobian eigenvalues that has no $Y$/$Z$ split, which is
# what the Midpoint rule needs (below). This choice has a cost, measured in {ref}`sec-recon-precision`: a ReLU output is never
# negative, so every step adds to every feature, and the state grows by a factor
# {glue:text}`midpoint_relu_growth:.0f` over 100 blocks.
#
# **Leapfrog network.** For the second-order ODE $\ddot Y = -K^\top \sigma(KY + b)$,
#
# $$
# Y_{j+1} = 2 Y_j - Y_{j-1} - h^2 K_j^\top \sigma(K_j Y_j + b_j),
# \qquad
# Y_{j-1} = 2 Y_j - Y_{j+1} - h^2 K_j^\top \sigma(K_j Y_j + b_j):
# $$
#
# the same formula run backwards (the scheme is time-symmetric). Its first-order
# form $\dot Y = V$, $\dot V = -K^\top\sigma(KY+b)$ has the Jacobian
# $\begin{pmatrix} 0 & I \\ -K^\top D K & 0\end{pmatrix}$, purely imaginary by the
# proof of {ref}`ch-ode` with $A = I$.
#
# **Stability intervals.** For the test equation $\dot y = \lambda y$ the
# Midpoint rule is $y_{j+1} = y_{j-1} + 2h\lambda\, y_j$, whose characteristic
# equation $\mu^2 - 2h\lambda\mu - 1 = 0$ has roots with product $-1$. Both lie on
# the unit circle, and are distinct, exactly when $h\lambda = i\theta$ with
# $\lvert\theta\rvert < 1$ ($\mu = i\theta \pm \sqrt{1 - \theta^2}$); any real
# part of $h\lambda$, of either sign, puts one root outside. So the Midpoint
# network is stable for $h\lambda \in i(-1, 1)$ only, a segment of the imaginary
# axis. Leapfrog linearised on a mode with $K^\top D K v = \omega^2 v$ is
# $y_{j+1} = (2 - h^2\omega^2) y_j - y_{j-1}$, the characteristic equation of
# {eq}`eq-verlet-mode`: stable for $0 < h\omega < 2$, Verlet's interval.
# {numref}`fig-stability-regions` draws both beside forward Euler's disk.
#
# **The pair, and the first step.** A two-step scheme needs two states. The block
# carries the pair $(Y_{j-1}, Y_j)$ as the two channel halves of one tensor and maps
# it to $(Y_j, Y_{j+1})$; its inverse maps $(Y_j, Y_{j+1})$ back to
# $(Y_{j-1}, Y_j)$. The first pair is formed by **$Y_{-1} = Y_0$** (the rule of
# the Meganet code of Haber, Ruthotto and co-authors: `ode.start_pair` duplicates
# the channels), so the first Midpoint step is a forward Euler step of size $2h$
# and the first Leapfrog step starts from zero velocity,
# $Y_1 = Y_0 - h^2 K_0^\top\sigma(K_0 Y_0 + b_0)$. At the end, `ode.end_pair` keeps
# the newest state $Y_N$. Between the stages of a network the pair is kept, both
# states pooled and padded alike. {numref}`fig-two-step-coupling` shows why the
# pair makes a two-step scheme reversible: the step is an additive coupling
# followed by a swap of the halves.
#
# Another first step is in circulation. The course report of
# {cite:t}`masin_reversible`, which restates Chang et al.'s equations, writes the
# Leapfrog network with a separate first case,
# $Y_1 = 2Y_0 - h^2 K_0^\top\sigma(K_0 Y_0 + b_0)$ (its cases read "$j = 1$" and
# "$j > 0$", which overlap; the first step must be meant). That is the general
# step with $Y_{-1} = 0$: it doubles the state and starts the ODE
# $\ddot Y = -K^\top\sigma(KY + b)$ with the velocity $(Y_0 - Y_{-1})/h = Y_0/h$
# instead of 0. The Meganet code, whose `LeapFrogNN` cites
# {cite:t}`chang2018reversible`, starts at rest instead. So do we, $Y_{-1} = Y_0$;
# exercise 4 compares the two starts.

# %% tags=["remove-output"]
fig = draw_two_step_coupling()
glue("fig_two_step_coupling", fig, display=False)
plt.show()

# %% [markdown]
# ```{glue:figure} fig_two_step_coupling
# :name: fig-two-step-coupling
#
# The Midpoint step on the pair $(Y_{j-1}, Y_j)$: an additive coupling that adds
# $2hF(Y_j)$ to $Y_{j-1}$, then a swap, giving $(Y_j, Y_{j+1})$. Its inverse
# swaps back and subtracts $2hF(Y_j)$. Leapfrog is the same picture with
# $2Y_j - Y_{j-1} - h^2 K^\top\sigma(KY_j + b)$ in place of the sum.
# ```
#
#
# **The step size** $h$ is a constructor argument, fixed by default (a
# hyperparameter, like the kernel size); `learn_h=True` makes it a trainable
# scalar of each block, whose gradient the backward step returns like any
# parameter's.

# %% tags=["nbval-ignore-output"]
print(inspect.getsource(ode.TwoStepBlock._forward))
print(inspect.getsource(ode.TwoStepBlock._inverse))
print(inspect.getsource(ode.TwoStepBlock.backward_step))

# %% [markdown]
# The backward step of a two-step block evaluates $F$ once: from
# $Y_{j+1} = \alpha Y_j + \beta Y_{j-1} + \gamma F(Y_j)$ (Midpoint: $\alpha = 0$,
# $\beta = 1$, $\gamma = 2h$; Leapfrog: $\alpha = 2$, $\beta = -1$, $\gamma = -h^2$)
# and $Y_j^{\text{out}} = Y_j$,
#
# $$
# \bar Y_{j-1} = \beta\, \bar Y_{j+1}, \qquad
# \bar Y_j = \bar Y_j^{\text{out}} + \alpha\, \bar Y_{j+1}
#   + \Big(\frac{\partial (\gamma F)}{\partial Y_j}\Big)^{\!\top} \bar Y_{j+1},
# \qquad \bar\theta = \Big(\frac{\partial (\gamma F)}{\partial \theta}\Big)^{\!\top} \bar Y_{j+1},
# $$
#
# and the one evaluation of $F(Y_j)$ also gives $Y_{j-1}$ for the next step down.
# The unit tests check every block against mode `"autograd"` (float32, relative
# error at most 1e-5, with and without a learned $h$) and with `gradcheck` in
# float64. Here is the same check, and the inverse, for a stack of each:


# %%
def randomise_biases(module: nn.Module, std: float = 0.1) -> nn.Module:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, std)
    return module


def stack(
    kind: str, depth: int, h: float = 0.1, activation: str = "relu"
) -> revlib.ReversibleSequence:
    """depth blocks on a state of 8 channels (Y, Z of 4 each; or a pair of 4-channel
    states)."""
    make = {
        "Hamiltonian": lambda: ode.HamiltonianBlock(8, h=h, activation=activation),
        "Midpoint": lambda: ode.MidpointBlock(4, h=h, activation=activation),
        "Leapfrog": lambda: ode.LeapfrogBlock(4, h=h, activation=activation),
    }[kind]
    return randomise_biases(revlib.ReversibleSequence([make() for _ in range(depth)]))


def first_state(kind: str, dtype=torch.float64) -> torch.Tensor:
    """A batch of 4 states of 8 x 8 pixels: (Y, Z) for Hamiltonian, the pair (Y_0,
    Y_0) otherwise."""
    g = torch.Generator().manual_seed(1)
    if kind == "Hamiltonian":
        return torch.randn(4, 8, 8, 8, generator=g, dtype=dtype)
    return ode.start_pair(torch.randn(4, 4, 8, 8, generator=g, dtype=dtype))


KINDS = ("Hamiltonian", "Midpoint", "Leapfrog")
check_rows = []
for kind in KINDS:
    model = stack(kind, 10).double()
    x = first_state(kind).requires_grad_(True)
    inverse_error = revlib.check_inverse(model, x.detach())
    grads = {}
    for mode in ("reversible", "autograd"):
        model.mode = mode
        x.grad = None
        model.zero_grad()
        (model(x) ** 2).sum().backward()
        grads[mode] = [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]
    grad_error = max(
        ((a - b).abs().max() / b.abs().max()).item()
        for a, b in zip(grads["reversible"], grads["autograd"], strict=True)
    )
    check_rows.append((kind, inverse_error, grad_error))
    print(
        f"{kind:12s} 10 blocks, float64: inverse error {inverse_error:.1e}, "
        f"gradient vs autograd (relative) {grad_error:.1e}"
    )
assert all(inv < 1e-13 and grad < 1e-12 for _, inv, grad in check_rows)

# %% [markdown]
# (sec-recon-precision)=
# ## Reconstruction error vs depth and precision
#
# Exact invertibility is a statement about real numbers. In floating point each
# step rounds, and the inverse recomputes rather than remembers, so the
# reconstructed input drifts from the true one as the stack deepens. We build
# 100 blocks of each kind (ReLU, $h = 0.1$, 3 x 3 kernels, 8 x 8 feature maps),
# run them forward from a random state in float64, float32 and bfloat16, invert
# from depth $d$ back to the input, and record
# $\max\lvert x - f^{-1}(f(x))\rvert / \max\lvert x\rvert$. A fourth curve, Midpoint
# with $\sigma = \tanh$, isolates an effect explained below.

# %% tags=["nbval-ignore-output"]
DEPTH = 100
depth_marks = [1, 2, 5, 10, 20, 50, 100]
precisions = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
}
variants = {kind: (kind, "relu") for kind in KINDS}
variants["Midpoint, tanh"] = ("Midpoint", "tanh")

recon = {}  # (variant, precision) -> errors at depth_marks
state_size = {}  # variant -> max |Y_100| / max |x| in float64
for variant, (kind, activation) in variants.items():
    torch.manual_seed(2)
    blocks = list(stack(kind, DEPTH, activation=activation).blocks)
    for pname, dtype in precisions.items():
        these = [copy.deepcopy(b).to(dtype) for b in blocks]
        x = first_state(kind, dtype)
        with torch.no_grad():
            states = [x]
            for b in these:
                states.append(b(states[-1]))
            errors = []
            for d in depth_marks:
                y = states[d]
                for b in reversed(these[:d]):
                    y = b.inverse(y)
                errors.append(
                    (
                        (y.double() - x.double()).abs().max() / x.double().abs().max()
                    ).item()
                )
        recon[variant, pname] = errors
        if pname == "float64":
            state_size[variant] = (states[-1].abs().max() / x.abs().max()).item()

table = [
    "| blocks | "
    + " | ".join(f"error at depth 100, {p}" for p in precisions)
    + " | max abs Y_100 / max abs x |",
    "|---|" + "---|" * (len(precisions) + 1),
]
for variant in variants:
    table.append(
        f"| {variant} | "
        + " | ".join(f"{recon[variant, p][-1]:.1e}" for p in precisions)
        + f" | {state_size[variant]:.1f} |"
    )
display(Markdown("\n".join(table)))

worst = {p: max(recon[v, p][-1] for v in KINDS) for p in precisions}
worst_well = {
    p: max(recon[v, p][-1] for v in ("Hamiltonian", "Leapfrog", "Midpoint, tanh"))
    for p in precisions
}
assert (
    worst_well["float64"] < 1e-13
    and worst_well["float32"] < 1e-5
    and worst_well["bfloat16"] < 0.5
)
assert (
    recon["Midpoint", "bfloat16"][-1] > 10 * recon["Midpoint, tanh", "bfloat16"][-1]
)
assert state_size["Midpoint"] > 20 * state_size["Midpoint, tanh"]
assert recon["Leapfrog", "bfloat16"][-1] > 2 * recon["Hamiltonian", "bfloat16"][-1]
for p in precisions:
    for v in variants:
        glue(
            f"recon_{v.split(',')[0].lower()}{'_tanh' if 'tanh' in v else ''}_{p}",
            recon[v, p][-1],
            display=False,
        )
glue("midpoint_relu_growth", state_size["Midpoint"], display=False)

# %%
fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.6), sharey=True)
for ax, pname in zip(axes, precisions, strict=True):
    for variant, style in zip(variants, ["o-", "s-", "^-", "v--"], strict=True):
        ax.loglog(
            depth_marks,
            [max(e, 1e-17) for e in recon[variant, pname]],
            style,
            ms=4,
            label=variant,
        )
    ax.set_title(pname)
    ax.set_xlabel("depth d")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("max |x - inverse(f(x))| / max |x|")
axes[0].legend(fontsize=8)
fig.suptitle(
    "Reconstruction error vs depth and precision "
    "(100-block stacks, ReLU unless noted)"
)
fig.tight_layout()
plt.show()

# %% [markdown]
# At depth 100 the Hamiltonian stack reconstructs its input to
# {glue:text}`recon_hamiltonian_float64:.1e` in float64,
# {glue:text}`recon_hamiltonian_float32:.1e` in float32 and
# {glue:text}`recon_hamiltonian_bfloat16:.1e` in bfloat16; the Leapfrog stack to
# {glue:text}`recon_leapfrog_float64:.1e`, {glue:text}`recon_leapfrog_float32:.1e`
# and {glue:text}`recon_leapfrog_bfloat16:.1e`. Leapfrog's error grows faster with
# depth: along directions where $F$ is flat its recurrence is
# $e_{j+1} = 2e_j - e_{j-1}$, which carries an earlier rounding error forward with a
# linearly growing weight, where the Hamiltonian coupling carries it with weight
# about 1.
#
# Midpoint with ReLU is the outlier ({glue:text}`recon_midpoint_float64:.1e`,
# {glue:text}`recon_midpoint_float32:.1e` and {glue:text}`recon_midpoint_bfloat16:.1e`,
# relative to the input's size). With $\sigma = $ ReLU the antisymmetric layer's
# output is never negative, so every step adds a nonnegative amount to every
# feature: the states grow by a factor {glue:text}`midpoint_relu_growth:.0f` over
# the 100 blocks, and the absolute rounding errors grow with them. With
# $\tanh$ (odd, bounded) the same Midpoint stack reconstructs as well as the others
# ({glue:text}`recon_midpoint_tanh_bfloat16:.1e` in bfloat16). Apart from the
# ReLU Midpoint stack, float32 reconstructs to within about $10^{-6}$ of the
# input's size at depth 100 and float64 to round-off; in bfloat16 (8 significant
# bits) no scheme does better than a few percent, so a bfloat16 reversible network
# should run at least its reconstruction in float32.
#
# ## Activation memory vs depth
#
# In mode `"reversible"` a `ReversibleSequence` saves only its output, whatever
# the block. `revlib.core.memory.saved_tensor_bytes` counts the bytes autograd keeps
# for the backward pass (batch 8, 8 channels, 16 x 16, float32):

# %%
mem_depths = [2, 8, 32, 64]
x_mem = torch.randn(8, 8, 16, 16)
memory = {}
for kind in KINDS:
    for mode in ("reversible", "autograd"):
        model = stack(kind, max(mem_depths))
        row = []
        for d in mem_depths:
            model_d = revlib.ReversibleSequence(list(model.blocks)[:d], mode=mode)
            row.append(
                saved_tensor_bytes(model_d, x_mem.clone().requires_grad_(True))
            )
        memory[kind, mode] = row
        print(f"{kind:12s} {mode:10s} bytes saved at depths {mem_depths}: {row}")
    assert (
        len(set(memory[kind, "reversible"])) == 1
        and memory[kind, "reversible"][0] == x_mem.numel() * 4
    )
    assert memory[kind, "autograd"][-1] > 20 * memory[kind, "autograd"][0]
glue("mem_flat_bytes", memory["Hamiltonian", "reversible"][0], display=False)
glue("mem_ham_autograd_64", memory["Hamiltonian", "autograd"][-1], display=False)

# %% [markdown]
# In mode `"reversible"` all three save {glue:text}`mem_flat_bytes:,` bytes at
# every depth (the chain's output, one activation tensor); in mode `"autograd"` the
# Hamiltonian stack saves {glue:text}`mem_ham_autograd_64:,` bytes at 64 blocks:
# the picture of {numref}`fig-memory-depth` again.
#
# ## Chang et al.'s networks
#
# `revlib.models` builds the seven networks of the table of {cite:t}`chang2018reversible`: a stem
# (3 x 3 convolution, BN, ReLU), three stages of blocks joined by stride-2 average
# pooling and symmetric zero-padding of the channels, then BN, ReLU, global average
# pooling and a fully connected layer. For the Hamiltonian networks the stage
# width is the whole state ($Y$ and $Z$ have half each, and each $K$ maps half the
# width to half the width, as in Chang et al.'s code). For Midpoint and Leapfrog it
# is the width of one state $Y_j$, so the pair has twice as many channels and each
# $K$ is a width x width kernel. Following Chang et al.'s TensorFlow code
# (`changebo/revnet-public`, `hamiltonian_model.py`), the first block of stages 2
# and 3 still runs at the previous width, and the pooling and padding follow it
# (`transition="in_first_block"`); `transition="between_stages"` puts every block
# of a stage at the stage's width instead.

# %%
chang_rows = []
for name in chang.CHANG_CONFIGS:
    with torch.device("meta"):  # shapes only
        ours = count_parameters(getattr(chang, name)())
        ours100 = count_parameters(getattr(chang, name)(num_classes=100))
        between = count_parameters(getattr(chang, name)(transition="between_stages"))
    paper10, paper100 = chang.CHANG_PARAMS_M[name]
    chang_rows.append((name, ours, ours100, between, paper10, paper100))

show_table(
    [
        "network",
        "units",
        "widths",
        "ours, C-10",
        "ours, C-100",
        "Chang et al. (M)",
        "ours, blocks at stage width",
    ],
    [
        [
            name,
            "-".join(map(str, chang.CHANG_CONFIGS[name]["units"])),
            "-".join(map(str, chang.CHANG_CONFIGS[name]["widths"])),
            f"{ours:,}",
            f"{ours100:,}",
            f"{paper10:.2f} / {paper100:.2f}" if paper100 else f"{paper10:.2f}",
            f"{between:,}",
        ]
        for name, ours, ours100, between, paper10, paper100 in chang_rows
    ],
)
counts = {
    name: (ours, ours100, between)
    for name, ours, ours100, between, _, _ in chang_rows
}
assert (
    round(counts["hamiltonian74"][0] / 1e6, 2) == 0.43
    and round(counts["hamiltonian74"][1] / 1e6, 2) == 0.44
)
assert (
    round(counts["hamiltonian218"][0] / 1e6, 2) == 1.68
    and round(counts["hamiltonian218"][1] / 1e6, 2) == 1.69
)
assert (
    round(counts["hamiltonian1202"][0] / 1e6, 2) == 9.63
    and round(counts["hamiltonian1202"][2] / 1e6, 2) == 9.70
)
for name in ("midpoint26", "leapfrog26"):
    assert round(counts[name][0] / 1e6, 2) == 0.54
for name in ("midpoint62", "leapfrog62"):
    assert round(counts[name][0] / 1e6, 2) == 1.80
for name, (ours, _, _) in counts.items():
    glue(f"params_{name}", ours, display=False)
glue("params_hamiltonian1202_between", counts["hamiltonian1202"][2], display=False)
glue(
    "params_1202_difference",
    counts["hamiltonian1202"][2] - counts["hamiltonian1202"][0],
    display=False,
)
# parameters of one Hamiltonian block of width w
block_at = lambda w: 2 * 9 * (w // 2) ** 2 + w  # noqa: E731
assert counts["hamiltonian1202"][2] - counts["hamiltonian1202"][0] == block_at(
    64
) - block_at(32) + block_at(128) - block_at(64)
glue("params_midpoint26_between", counts["midpoint26"][2], display=False)

# %% [markdown]
# **Hamiltonian-74 and -218 match the table**: {glue:text}`params_hamiltonian74:,`
# and {glue:text}`params_hamiltonian218:,` parameters round to the published 0.43 M
# and 1.68 M (and to 0.44 M and 1.69 M at 100 classes). The count is
# $2 \cdot 9 (w/2)^2$ kernel weights and $w$ biases per block of width $w$, plus the
# stem (864 weights, 64 BN parameters), the final BN and the classifier.
#
# **Hamiltonian-1202 does not**: with the same layout as the two smaller networks
# it has {glue:text}`params_hamiltonian1202:,` parameters (9.63 M), while the table
# prints 9.70 M. The published number is what the other layout gives, with all
# 100 blocks of each stage at the stage's width
# ({glue:text}`params_hamiltonian1202_between:,`, 9.70 M). The whole difference,
# {glue:text}`params_1202_difference:,` parameters, is the first block of stages 2
# and 3 running at 64 and 128 channels instead of 32 and 64. The table's three
# Hamiltonian counts thus come from two different layouts. We keep the code's
# layout for all three and build the other with `transition="between_stages"`.
#
# **Midpoint and Leapfrog are larger than the table**: ours have
# {glue:text}`params_midpoint26:,` (0.54 M, Chang et al.: 0.50 M) and
# {glue:text}`params_midpoint62:,` (1.80 M, Chang et al.: 1.78 M) parameters.
# Chang et al. publish no code for these two networks and do not give the shape of
# their kernels. Ours hold one $w \times w$ 3 x 3 kernel and a bias per block of
# width $w$, the least a $K^\top\sigma(K\cdot)$ or $\sigma((K - K^\top)\cdot)$ block
# can hold at the table's widths (a state of half the width would hold a quarter
# of the kernel weights, far below the table). The other layout gives even more
# ({glue:text}`params_midpoint26_between:,` for Midpoint-26). Neither layout
# reproduces 0.50 M and 1.78 M, so the difference is reported, not explained.
#
# (sec-which-hamiltonian)=
# ### Which Hamiltonian block? The official code's versions
#
# The history of `resnet/models/hamiltonian_model.py` in Chang et al.'s
# repository holds three versions of the block's sub-function, all of the form
# $h\,K^\top \mathrm{ReLU}(\cdot)\,K$ with one kernel (details in the note below):
#
# * **BN inside**: a BatchNorm on the input and one after $K$, no bias (scale and
#   shift of $C/2$ channels each: $2C$ parameters per sub-function, $C$ for the
#   network's very first F, which has no input BatchNorm);
# * **two biases**: a bias added to the input and one after $K$, no BatchNorm
#   ($C$ per sub-function, $C/2$ for the first F);
# * **ours**: the paper's $K^\top\sigma(K\cdot + b)$, one bias after $K$ ($C/2$).
#
# The kernels are the same in all three, so the counts differ only by these
# per-block terms. The next cell adds them up for the three networks, in the
# code's layout (`transition="in_first_block"`), and rounds as the table does.


# %%
def version_count(name: str, per_function: float, first_f: float) -> int:
    """Parameters of network `name` if each F and G of width C holds per_function * C
    non-kernel parameters."""
    with torch.device("meta"):
        net = getattr(chang, name)()
    ours = count_parameters(net)
    blocks = [b for seq in net.sequences for b in seq.blocks]
    widths = [
        2 * b.F.fn.weight.shape[0] for b in blocks
    ]  # the block's width C (each half is C/2)
    extra = (
        sum(2 * (per_function - 0.5) * c for c in widths)
        + (first_f - per_function) * widths[0]
    )
    return ours + int(extra)


versions = {
    "ours (one bias)": (0.5, 0.5),
    "two biases": (1.0, 0.5),
    "BN inside": (2.0, 1.0),
}
version_rows, version_match = [], {}
for name in ("hamiltonian74", "hamiltonian218", "hamiltonian1202"):
    published = chang.CHANG_PARAMS_M[name][0]
    row = [name, f"{published:.2f}"]
    for label, (per_function, first_f) in versions.items():
        count = version_count(name, per_function, first_f)
        version_match[name, label] = round(count / 1e6, 2) == published
        row.append(
            f"{count:,} "
            f"({count / 1e6:.2f} M){' = table' if version_match[name, label] else ''}"
        )
    version_rows.append(row)
show_table(["network", "Chang et al. (M)", *versions], version_rows)
assert version_count("hamiltonian74", 0.5, 0.5) == counts["hamiltonian74"][0]
assert all(
    version_match[n, "ours (one bias)"] and version_match[n, "two biases"]
    for n in ("hamiltonian74", "hamiltonian218")
)
assert (
    not version_match["hamiltonian218", "BN inside"]
    and version_match["hamiltonian1202", "BN inside"]
)
assert (
    not version_match["hamiltonian1202", "ours (one bias)"]
    and not version_match["hamiltonian1202", "two biases"]
)

# %% [markdown]
# Hamiltonian-74 and -218 match a block without BatchNorm: ours, or the code's
# two-bias version (both round to 0.43 M and 1.68 M); with BatchNorm inside,
# Hamiltonian-218 would have 1.69 M. Hamiltonian-1202's 9.70 M, which our block
# reaches only with every block at the stage's width, is what the BatchNorm
# version gives in the code's own layout, and the commit that adds the
# Hamiltonian-1202 configuration uses that version. So the table's counts most
# likely come from two versions of the block. This book follows the version
# without BatchNorm, for two reasons: it is the paper's formula, on which the
# stability analysis of {ref}`ch-ode` rests, and it matches two of the three
# published counts; we read the third as a different block, not a different
# layout.
#
# ```{note}
# **The official code's history** (`changebo/revnet-public`, read with
# `git log` and `git show`; we did not run TensorFlow). `_residual_inner` in
# `resnet/models/hamiltonian_model.py`:
#
# * `a37fb3b` (2017-08-10): a RevNet-like block with two kernels, not yet $K^\top K$;
# * `564d4c2` to `5e444dd` (2017-08-14 to 08-18, the tip of `master`): $K$ and
#   $K^\top$ with BatchNorm `bn1` on the input and `bn2` after $K$, no bias, and
#   no step size (the sub-function returns `x`, so $h = 1$);
# * `881ddfd` "Remove BN" (2017-08-18): `bias1` on the input and `bias2` after
#   $K$, no BatchNorm, and `return x * 0.1`;
# * `02f05b1` "Refactor" (2017-09-06) and `ae9d788` "Add new networks"
#   (2017-09-09, which adds the Hamiltonian-74 and -218 configurations): the same
#   two biases, `return x * self.config.h`, with `self.h = 1.0` in
#   `resnet/configs/cifar_configs.py`;
# * `3d17027` "Quick fix - batch size = 32" (2017-09-11, parent `881ddfd`): BatchNorm
#   back, biases commented out, `return x * 0.1`; it adds the Hamiltonian-1202
#   configuration;
# * `689054c` (2017-09-11, the merge that is the tip of branch `ham1122`):
#   BatchNorm inside, no bias, `return x * self.config.h` with `self.h = 1.0`.
#   Its `cifar_configs.py` still holds the merge's conflict markers
#   (`<<<<<<< HEAD` around the Hamiltonian-1202 and -50w configurations), so that
#   file does not import as committed.
# ```
#
# ### The step size at initialisation
#
# The official code's configuration file sets $h = 1.0$ (since `02f05b1`), but
# which block it multiplies changed with the history above: at $h = 1.0$ the
# code ran the two-bias block (`02f05b1`, `ae9d788`) and later the BatchNorm
# block (`689054c`), while `881ddfd` and `3d17027` hard-code 0.1, as does the
# earlier code by Lili Meng (`LiliMeng/hamiltonian-revnet`). What follows is a
# statement about the block this book uses, measured below for the others. With the code's
# initialisation (truncated normal, $\sigma = \sqrt{2/(9\,C_{out})}$) the
# operator $K^\top K$ of a 3 x 3 kernel has a norm of several units, and the
# frequencies $\omega$ of the linearised Hamiltonian system ({ref}`ch-ode`:
# $\omega^2$ an eigenvalue of $AB$, $\lVert A\rVert, \lVert B\rVert \le \lVert K^\top K\rVert$)
# can reach it. Verlet is stable only for $h\,\omega < 2$. We estimate
# $\lVert K^\top K\rVert$ by power iteration for the first kernel of each width, then
# run an untrained Hamiltonian-218 with both step sizes. `revlib` defaults to
# $h = 0.1$:


# %% tags=["nbval-ignore-output"]
def ktk_norm(kernel: torch.Tensor, iterations: int = 50) -> float:
    """Largest eigenvalue of K^T K for a 3 x 3 convolution on 32 x 32 maps, by power
    iteration."""
    v = torch.randn(
        1, kernel.shape[1], 32, 32, generator=torch.Generator().manual_seed(0)
    )
    for _ in range(iterations):
        w = nn.functional.conv_transpose2d(
            nn.functional.conv2d(v, kernel, padding=1), kernel, padding=1
        )
        value = w.norm().item() / v.norm().item()
        v = w / w.norm()
    return value


torch.manual_seed(0)
probe = chang.hamiltonian218()
norms = {
    seq.blocks[0].F.fn.weight.shape[0]: ktk_norm(seq.blocks[0].F.fn.weight)
    for seq in probe.sequences
}
print(
    "largest eigenvalue of K^T K, by half-width:",
    ", ".join(f"{c}: {v:.2f}" for c, v in norms.items()),
)
assert all(
    2 < v < 20 for v in norms.values()
)  # h = 1 exceeds Verlet's limit, h = 0.1 stays below it
glue("ktk_min", min(norms.values()), display=False)
glue("ktk_max", max(norms.values()), display=False)

x_img = torch.randn(2, 3, 32, 32)
size_after = {}
for h in (1.0, 0.1):
    torch.manual_seed(0)
    net = chang.hamiltonian218(h=h).eval()
    with torch.no_grad():
        state = net.stem(x_img)
        start = state.abs().max().item()
        for k, seq in enumerate(net.sequences):
            state = seq(state)
            if k < len(net.transitions):
                state = net.transitions[k](state)
    size_after[h] = state.abs().max().item() / start
    print(
        f"Hamiltonian-218 with h = {h}: largest feature after "
        f"the 54 blocks / after the stem = {size_after[h]:.3g}"
    )
assert size_after[1.0] > 1e6 and size_after[0.1] < 10
glue("h1_growth", size_after[1.0], display=False)


def bn_version_growth(net: nn.Module, x: torch.Tensor, h: float) -> float:
    """The same kernels in the code's BatchNorm block, h K^T ReLU(BN(K BN(.))), in
    training mode (batch statistics)."""

    def sub(weight, v, first=False):
        v = v if first else nn.functional.batch_norm(v, None, None, training=True)
        u = nn.functional.batch_norm(
            nn.functional.conv2d(v, weight, padding=1), None, None, training=True
        )
        return h * nn.functional.conv_transpose2d(torch.relu(u), weight, padding=1)

    with torch.no_grad():
        state = net.stem(x)
        start = state.abs().max().item()
        for k, seq in enumerate(net.sequences):
            for j, block in enumerate(seq.blocks):
                y, z = state.chunk(2, dim=1)
                y = y + sub(block.F.fn.weight, z, first=(k == 0 and j == 0))
                z = z - sub(block.G.fn.weight, y)
                state = torch.cat([y, z], 1)
            if k < len(net.transitions):
                state = net.transitions[k](state)
    return state.abs().max().item() / start


torch.manual_seed(0)
bn_growth = bn_version_growth(chang.hamiltonian218(h=1.0).eval(), x_img, h=1.0)
print(
    "the code's BatchNorm block, same kernels, h = 1, "
    f"batch statistics: largest feature grows {bn_growth:.3g} times"
)
assert bn_growth < 1e-3 * size_after[1.0]
glue("h1_growth_bn", bn_growth, display=False)

# %% [markdown]
# $\lVert K^\top K\rVert$ lies between {glue:text}`ktk_min:.1f` and
# {glue:text}`ktk_max:.1f`, so with $h = 1$ the fastest directions can violate
# $h\,\omega < 2$, and the largest feature grows by a factor
# {glue:text}`h1_growth:.1e` through the untrained Hamiltonian-218 built from our
# block; with $h = 0.1$ it stays of the same order. The code's two-bias block at
# $h = 1.0$ computes the same function at initialisation (its biases start at
# zero, and its kernels are drawn from the same distribution), so the blow-up
# holds for that version too. The BatchNorm version does not blow up this way:
# normalising the input of every $K$ by the batch's statistics keeps each update
# of the order of $\lVert K^\top\rVert\,\lVert K\rVert$, and with the same
# kernels and $h = 1$ the largest feature grows only
# {glue:text}`h1_growth_bn:.3g` times. The blow-up is therefore a statement about
# the block without normalisation, at initialisation; it says nothing about the
# trained networks of the paper.
#
# The whole networks keep the flat memory of their blocks: in mode
# `"reversible"` Hamiltonian-1202 saves exactly as many bytes as Hamiltonian-218
# (same widths, 5.5 times the depth), here on 8 x 8 grey images:

# %%
x_small = torch.randn(4, 1, 8, 8)
net_memory = {}
for name in ("hamiltonian218", "hamiltonian1202"):
    torch.manual_seed(0)
    net = getattr(chang, name)(in_channels=1)
    for mode in ("reversible", "autograd"):
        net.mode = mode
        net_memory[name, mode] = saved_tensor_bytes(net, x_small)
    print(
        f"{name:16s} saved bytes: reversible {net_memory[name, 'reversible']:,}, "
        f"autograd {net_memory[name, 'autograd']:,}"
    )
assert (
    net_memory["hamiltonian218", "reversible"]
    == net_memory["hamiltonian1202", "reversible"]
)
assert (
    net_memory["hamiltonian1202", "autograd"]
    > 4 * net_memory["hamiltonian218", "autograd"]
)
glue("net_mem_rev", net_memory["hamiltonian1202", "reversible"], display=False)
glue("net_mem_auto_1202", net_memory["hamiltonian1202", "autograd"], display=False)

# %% [markdown]
# Both save {glue:text}`net_mem_rev:,` bytes in mode `"reversible"` (the stem, one
# tensor per sequence and the head); in mode `"autograd"` Hamiltonian-1202 saves
# {glue:text}`net_mem_auto_1202:,` bytes.
#
# ## Training on two spirals
#
# A small experiment on the CPU: two interleaved spirals in the plane (600 training
# and 600 test points, drawn from a fixed seed; this is a synthetic toy data set,
# the usual 2-D demonstration of {cite:t}`haber2017stable`). Both networks lift
# the point to 6 features with a linear layer, apply 12 blocks with $h = 0.3$ and
# $\sigma = \tanh$, and classify with a linear layer:
#
# * a plain **ResNet**: $Y \leftarrow Y + h \tanh(KY + b)$, $K$ a 6 x 6 matrix;
# * a **Hamiltonian network**: 12 dense `HamiltonianBlock`s ($Y$, $Z$ of 3
#   features each, each $K$ of size 6 x 3), trained in mode `"reversible"`, so the
#   backward pass reconstructs the block inputs instead of storing them.
#
# Both train with Adam (learning rate 0.02, 300 full-batch steps).

# %% tags=["nbval-ignore-output"]
g = torch.Generator().manual_seed(0)


def two_spirals(n: int, noise: float = 0.04):
    t = torch.rand(n, generator=g) * 3 * math.pi + 0.5
    r = t / (3 * math.pi + 0.5)
    arm = torch.stack([r * torch.cos(t), r * torch.sin(t)], 1)
    points = torch.cat([arm, -arm]) + noise * torch.randn(2 * n, 2, generator=g)
    return points, torch.cat([torch.zeros(n), torch.ones(n)]).long()


x_train, y_train = two_spirals(300)
x_test, y_test = two_spirals(300)


class EulerBlock(nn.Module):
    def __init__(self, width: int, h: float):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.h = h

    def forward(self, y):
        return y + self.h * torch.tanh(self.lin(y))


WIDTH, BLOCKS, H = 6, 12, 0.3


def resnet():
    return nn.Sequential(
        nn.Linear(2, WIDTH),
        *[EulerBlock(WIDTH, H) for _ in range(BLOCKS)],
        nn.Linear(WIDTH, 2),
    )


def hamiltonian_net():
    blocks = [
        ode.HamiltonianBlock(
            WIDTH, kernel_size=None, hidden=WIDTH, h=H, activation="tanh"
        )
        for _ in range(BLOCKS)
    ]
    return nn.Sequential(
        nn.Linear(2, WIDTH),
        revlib.ReversibleSequence(blocks, mode="reversible"),
        nn.Linear(WIDTH, 2),
    )


def train(model, steps=300, lr=0.02):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x_train), y_train)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():

        def acc(x, y):
            return (model(x).argmax(1) == y).float().mean().item()

        return loss.item(), acc(x_train, y_train), acc(x_test, y_test)


results, trained = {}, {}
for name, make in (("ResNet", resnet), ("Hamiltonian", hamiltonian_net)):
    torch.manual_seed(0)
    trained[name] = make()
    results[name] = (count_parameters(trained[name]), *train(trained[name]))
table = [
    "| network | parameters | final training loss "
    "| training accuracy | test accuracy |",
    "|---|---|---|---|---|",
]
for name, (n, loss, acc_tr, acc_te) in results.items():
    table.append(f"| {name} | {n} | {loss:.4f} | {acc_tr:.3f} | {acc_te:.3f} |")
display(Markdown("\n".join(table)))
assert all(acc_te > 0.9 for (_, _, _, acc_te) in results.values())
lifted = trained["Hamiltonian"][0](x_test).detach()
with torch.no_grad():
    largest_state = trained["Hamiltonian"][1](lifted).abs().max().item()
# float32 round-off through 12 blocks grows with the states' size: bound the error
# relative to it
assert revlib.check_inverse(trained["Hamiltonian"][1], lifted) / largest_state < 1e-5
glue("spiral_acc_resnet", results["ResNet"][3], display=False)
glue("spiral_acc_ham", results["Hamiltonian"][3], display=False)

# %%
grid = torch.linspace(-1.3, 1.3, 150)
gx, gy = torch.meshgrid(grid, grid, indexing="xy")
grid_points = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2))
for ax, (name, model) in zip(axes, trained.items(), strict=True):
    with torch.no_grad():
        p = torch.softmax(model(grid_points), 1)[:, 1].reshape(gx.shape)
    ax.contourf(gx, gy, p, levels=[0, 0.5, 1], colors=["#c6dbef", "#fdd0a2"])
    ax.contour(gx, gy, p, levels=[0.5], colors="k", linewidths=1)
    for label, color in ((0, "tab:blue"), (1, "tab:orange")):
        pts = x_test[y_test == label]
        ax.plot(pts[:, 0], pts[:, 1], ".", color=color, ms=3)
    ax.set_title(f"{name}: test accuracy {results[name][3]:.3f}")
    ax.set_aspect("equal")
fig.suptitle("Decision boundaries on two spirals (test points)")
fig.tight_layout()
plt.show()

# %% [markdown]
# Both networks separate the spirals (test accuracy {glue:text}`spiral_acc_resnet:.3f`
# for the ResNet, {glue:text}`spiral_acc_ham:.3f` for the Hamiltonian network), and
# the Hamiltonian network did so with a backward pass that stored none of its
# blocks' activations. One seed on a toy problem says nothing about which is
# better; {ref}`ch-training` compares them on real images over several seeds.
#
# ## Weight smoothness decay
#
# Chang et al. regularise the kernels of consecutive blocks of a stage towards
# each other. In the ODE reading, block $j$ holds $K(t_j)$, and a network whose
# kernels jump from block to block is a rough function of time. The penalty,
# from {cite:t}`haber2017stable`, is
#
# $$
# R = \text{rate} \sum_{\text{stages}} \sum_j \lVert K_j - K_{j+1}\rVert_F^2
# \qquad \Big(\text{with the papers' } 1/h:\ \
# \frac{\text{rate}}{h}\sum_j \lVert K_j - K_{j+1}\rVert_F^2 \approx \text{rate}\int \lVert \dot K(t)\rVert_F^2\, dt\Big),
# $$
#
# over both kernels $K_1$ and $K_2$ of every Hamiltonian block, with rate 2e-4 on
# CIFAR. Its gradient with respect to an inner kernel is
# $2\,\text{rate}\,(2K_j - K_{j-1} - K_{j+1})$, a discrete second derivative in
# depth: it pulls each kernel towards the average of its neighbours.
# `revlib.core.smoothness.weight_smoothness(model, rate, h=None)` returns $R$ as a
# tensor to add to the loss:


# %%
def dense_block(k1: float, k2: float) -> ode.HamiltonianBlock:
    block = ode.HamiltonianBlock(4, kernel_size=None)  # K1, K2 of shape 2 x 2
    with torch.no_grad():
        block.F.fn.weight.fill_(k1)
        block.G.fn.weight.fill_(k2)
    return block


stage = [dense_block(0.0, 1.0), dense_block(1.0, 1.0), dense_block(3.0, -1.0)]
R = weight_smoothness([stage], rate=1.0)
by_hand = 4 * ((1 - 0) ** 2 + (3 - 1) ** 2) + 4 * ((1 - 1) ** 2 + (-1 - 1) ** 2)
print(
    f"R (rate 1) = {R.item():g}; by hand: "
    f"4 entries x ((1-0)^2 + (3-1)^2) + 4 x (0^2 + (-1-1)^2) = {by_hand}"
)
R.backward()
K1 = [b.F.fn.weight for b in stage]
laplacian = 2 * (2 * K1[1] - K1[0] - K1[2])
print(
    "dR/dK1 of the middle block:",
    K1[1].grad[0, 0].item(),
    "= 2 (2 K_1 - K_0 - K_2) =",
    laplacian[0, 0].item(),
)
assert R.item() == by_hand and torch.equal(K1[1].grad, laplacian)

# %% [markdown]
# Chang et al.'s code computes each term with `tf.nn.l2_loss`, which is
# $\tfrac12\lVert\cdot\rVert^2$, so their rate 2e-4 is rate 1e-4 in the formula
# above. That code, as published, does not apply the penalty (the note below
# gives the lines).
#
# ```{note}
# In `resnet/models/hamiltonian_model.py` of `changebo/revnet-public` at commit
# `689054c` (branch `ham1122`), `_weight_smoothness` looks each kernel up by the
# name `unit_{k}_{j}` with the stage index `k` in `range(num_units)`, counted from 0
# (lines 85 and 90-93), while the blocks are created in scopes
# `unit_{ss + 1}_{ii}`, counted from 1 (line 528); and it keeps a pair only if
# `var_K1[2]==var_K1_plus[2]` (lines 94 and 99), where `==` between two
# TensorFlow 1 tensors compares object identity and is false for two fresh
# slices. No term is ever appended, and the function returns the number 0
# (lines 102-104). `resnet/models/resnet_model.py` at the same commit confirms it
# indirectly: line 96 prints the penalty with `'%f' %`, which raises a
# `TypeError` for a TensorFlow tensor, so a model that builds at all has a
# penalty of 0. (We read the code; we did not run TensorFlow.)
# ```
#
# ### Not a penalty on one optimizer step
#
# The course report of {cite:t}`masin_reversible` describes weight smoothness as "penalizing the difference
# between the current weights and the weights before the optimizer step",
# $\text{rate}\,\lVert W_t - W_{t-1}\rVert^2$, with a cache of the previous weights.
# That is a different regulariser: it compares each block with **itself one
# training step earlier**, not with **its neighbour in depth**. Three consequences,
# checked below on a network whose kernels are deliberately rough in depth:
#
# * it is 0 at the first step and tiny afterwards: for plain SGD,
#   $W_t - W_{t-1} = -\eta\, g_{t-1}$, so the penalty is
#   $\text{rate}\,\eta^2 \lVert g_{t-1}\rVert^2$;
# * its gradient $2\,\text{rate}\,(W_t - W_{t-1}) = -2\,\text{rate}\,\eta\, g_{t-1}$ only
#   rescales the previous step, like a momentum term with coefficient
#   $-2\,\text{rate}\,\eta$ (here $-4\cdot 10^{-5}$), and does nothing to the
#   roughness of the kernels in depth;
# * the depth penalty $R$ is large on rough kernels, and its gradient smooths them.

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
rough = nn.Sequential(
    nn.Linear(2, 4),
    revlib.ReversibleSequence(
        [
            ode.HamiltonianBlock(4, kernel_size=None, activation="tanh")
            for _ in range(6)
        ]
    ),
    nn.Linear(4, 2),
)
rate, lr = 2e-4, 0.1


def sgd_run(model, penalty: str, steps: int = 5):
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    previous = None
    values = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x_train), y_train)
        if penalty == "depth":
            term = weight_smoothness(model, rate=rate)
        elif penalty == "step":
            term = (
                torch.zeros(())
                if previous is None
                else rate
                * sum(
                    (p - q).pow(2).sum()
                    for p, q in zip(model.parameters(), previous, strict=True)
                )
            )
        else:
            term = torch.zeros(())
        values.append(term.item())
        (loss + term).backward()
        previous = [
            p.detach().clone() for p in model.parameters()
        ]  # the weights before this step
        opt.step()
    return model, values


plain, _ = sgd_run(rough, "none")
step_model, step_values = sgd_run(rough, "step")
depth_model, depth_values = sgd_run(rough, "depth")
change_by_step = max(
    (a - b).abs().max().item()
    for a, b in zip(step_model.parameters(), plain.parameters(), strict=True)
)
change_by_depth = max(
    (a - b).abs().max().item()
    for a, b in zip(depth_model.parameters(), plain.parameters(), strict=True)
)
print(
    "step-change penalty over 5 SGD steps:",
    ", ".join(f"{v:.2e}" for v in step_values),
)
print(
    "depth penalty R over 5 SGD steps:   ",
    ", ".join(f"{v:.2e}" for v in depth_values),
)
print(
    "largest weight difference from plain SGD after 5 steps: "
    f"step-change penalty {change_by_step:.1e}, "
    f"depth penalty {change_by_depth:.1e}"
)
assert step_values[0] == 0 and max(step_values) < 1e-3 * depth_values[0]
assert change_by_step < 1e-3 * change_by_depth
glue("step_penalty_max", max(step_values), display=False)
glue("depth_penalty_first", depth_values[0], display=False)
glue("change_by_step", change_by_step, display=False)
glue("change_by_depth", change_by_depth, display=False)

# %% [markdown]
# Over five SGD steps the step-change penalty never exceeds
# {glue:text}`step_penalty_max:.1e`, against {glue:text}`depth_penalty_first:.1e` for
# the depth penalty on the same rough network, and it moves the weights by at most
# {glue:text}`change_by_step:.0e` away from plain SGD (the depth penalty:
# {glue:text}`change_by_depth:.0e`). The step-change reading is a negligible,
# depth-blind damping of the optimizer; `revlib.core.smoothness` implements the
# depth penalty of the papers.
#
# ## What we learned
#
# * The Hamiltonian block is a RevNet coupling with $F$ and $G$ of the form
#   $\pm h K^\top\sigma(K\cdot + b)$, stepped by symplectic Euler ("Verlet"); Midpoint and Leapfrog are two-step schemes that
#   become one-step reversible blocks on the pair $(Y_{j-1}, Y_j)$, started by
#   $Y_{-1} = Y_0$. All three run in `ReversibleSequence` with flat activation
#   memory and gradients equal to autograd's.
# * Reconstruction is exact in exact arithmetic only: at depth 100, float64 and
#   float32 reconstruct to round-off, bfloat16 only to a few percent, and ReLU
#   Midpoint stacks, whose states grow, reconstruct worst.
# * Our Hamiltonian-74 and -218 have Chang et al.'s parameter counts;
#   Hamiltonian-1202's published count matches the official code's BatchNorm
#   version of the block (or ours with a different layout), and our
#   Midpoint and Leapfrog networks, built from the published formulas, are larger
#   than the table.
# * Weight smoothness decay couples neighbouring blocks in depth; a penalty on one
#   optimizer step's change of the weights is a different, and practically inert,
#   regulariser.
# * The Midpoint rule is stable only for $h\lambda \in i(-1, 1)$ and Leapfrog for
#   $h\omega < 2$ ({numref}`fig-stability-regions`): both need a right-hand side
#   with (nearly) imaginary eigenvalues, which the antisymmetric and
#   $K^\top\sigma(K\cdot)$ forms provide.
#
# ## Exercises
#
# 1. **Derivation.** Show that the Midpoint rule applied to $\dot y = -\gamma y$,
#    $\gamma > 0$, has a root $\mu$ with $\lvert\mu\rvert > 1$ for every $h > 0$
#    (the "parasitic" root). What does this mean for a Midpoint network whose
#    $F$ has eigenvalues with negative real part? (Hint: $\mu = -h\gamma \pm
#    \sqrt{1 + h^2\gamma^2}$.)
# 2. **Derivation.** Write the Leapfrog step on the pair $(Y_{j-1}, Y_j)$ as a
#    coupling followed by a swap, as in {numref}`fig-two-step-coupling`, and
#    derive its backward step from {eq}`eq-alg1-dz1`--{eq}`eq-alg1-dW`. Check it
#    against the $\alpha, \beta, \gamma$ form above.
# 3. **Code change.** Replace the Midpoint network's $F$ by the antisymmetric
#    layer with $\tanh$, or by $K^\top\tanh(K\cdot + b)$ with a minus sign, and
#    rerun the reconstruction experiment. Which choice keeps the state bounded
#    over 100 blocks, and why?
# 4. **Experiment.** Start the Leapfrog stack with $Y_{-1} = 0$ (the course
#    report's first step) instead of $Y_{-1} = Y_0$ and compare the largest
#    feature after 100 blocks, and the float32 reconstruction error.
# 5. **Experiment.** Train the two-spiral Hamiltonian network with weight
#    smoothness decay at rates 0, 1e-3 and 1e-2 and plot its kernels against
#    depth. Does the penalty change the accuracy, the smoothness, or both?
#
# ## Solutions
#
# Each solution is folded; open it after trying the exercise. Where a solution
# has a number, the folded code cell above it computes and checks it.

# %% tags=["hide-cell"]
for h_gamma in (0.01, 0.1, 1.0):
    mu = (-h_gamma - math.sqrt(1 + h_gamma**2), -h_gamma + math.sqrt(1 + h_gamma**2))
    print(
        f"h gamma = {h_gamma}: roots {mu[0]:+.4f}, {mu[1]:+.4f}; "
        f"the parasitic root's modulus {abs(mu[0]):.4f}"
    )
    assert abs(mu[0]) > 1 and abs(mu[0] * mu[1] + 1) < 1e-12

# %% [markdown]
# ```{admonition} Solution 1 (the parasitic root)
# :class: dropdown
#
# With $\lambda = -\gamma$ the characteristic equation is
# $\mu^2 + 2h\gamma\mu - 1 = 0$, so $\mu = -h\gamma \pm \sqrt{1 + h^2\gamma^2}$. The
# product of the roots is $-1$; the root $-h\gamma - \sqrt{1 + h^2\gamma^2}$ has
# modulus $h\gamma + \sqrt{1 + h^2\gamma^2} > 1$ for every $h\gamma > 0$ (the cell
# prints it for three values). It is negative, so it makes the state alternate in
# sign and grow from step to step: the midpoint rule *amplifies* a decaying mode.
# A Midpoint network whose $F$ has eigenvalues with negative real part is unstable
# however small $h$ is, which is why its $F$ must have (nearly) imaginary
# eigenvalues: the antisymmetric layer, not $-K^\top\sigma(K\cdot)$.
# ```

# %% tags=["hide-cell"]
torch.manual_seed(0)
lf_K = nn.Linear(3, 3).double()
h_lf = 0.3
# K^T tanh(K y + b)
lf_F = lambda y: lf_K.weight.t() @ torch.tanh(lf_K(y))  # noqa: E731
y_prev, y_now = (
    torch.randn(3, dtype=torch.float64),
    torch.randn(3, dtype=torch.float64, requires_grad=True),
)
y_prev.requires_grad_(True)
y_next = 2 * y_now - y_prev - h_lf**2 * lf_F(y_now)
g_next, g_now_out = (
    torch.randn(3, dtype=torch.float64),
    torch.randn(3, dtype=torch.float64),
)
(y_next @ g_next + y_now @ g_now_out).backward()
jac_F = torch.autograd.functional.jacobian(lf_F, y_now.detach())
by_formula_prev = -g_next  # beta = -1
by_formula_now = (
    g_now_out + 2 * g_next + (-(h_lf**2) * jac_F).T @ g_next
)  # alpha = 2, gamma = -h^2
lf_err = max(
    (y_prev.grad - by_formula_prev).abs().max().item(),
    (y_now.grad - by_formula_now).abs().max().item(),
)
print(
    "Leapfrog backward step from the alpha, beta, "
    f"gamma form equals autograd (float64): {lf_err < 1e-14}"
)
assert lf_err < 1e-14

# %% [markdown]
# ```{admonition} Solution 2 (Leapfrog as a coupling and a swap)
# :class: dropdown
#
# On the pair $(u, v) = (Y_{j-1}, Y_j)$ the step is $u' = 2v - u - h^2 F(v)$,
# $v' = v$, followed by a swap of the halves. The first part changes one half by
# a function of the other and by a sign, so it is a coupling (with scale $-1$ on
# $u$ instead of 1, which keeps it volume preserving and invertible:
# $u = 2v - u' - h^2 F(v)$). With {eq}`eq-alg1-dz1`--{eq}`eq-alg1-dW` applied to
# it: $\bar u = -\bar u'$ (the sign), and
# $\bar v = \bar v' + 2\bar u' + (\partial(-h^2F)/\partial v)^\top \bar u'$, with
# parameter gradients $(\partial(-h^2F)/\partial\theta)^\top \bar u'$. Renaming
# $u' = Y_{j+1}$ and $v' = Y_j^{\text{out}}$ this is the $\alpha, \beta, \gamma$
# form with $\alpha = 2$, $\beta = -1$, $\gamma = -h^2$. The folded cell checks it
# against autograd in float64.
# ```


# %% tags=["hide-cell", "nbval-ignore-output"]
def check_inverse_rel(stack: nn.Module, x: torch.Tensor) -> float:
    """revlib.check_inverse relative to the largest input entry."""
    return revlib.check_inverse(stack, x) / x.abs().max().item()


def midpoint_stack(
    make_F, depth: int = 100, width: int = 8
) -> revlib.ReversibleSequence:
    return revlib.ReversibleSequence(
        [ode.MidpointBlock(width, h=0.1, F=make_F(width)) for _ in range(depth)]
    )


class NegKTK(nn.Module):
    """-K^T tanh(K x + b): symmetric negative semidefinite Jacobian."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.ktk = ode.KTransposeSigmaK(width, activation="tanh")

    def forward(self, x):
        return -self.ktk(x)


midpoint_variants = {
    "antisymmetric, ReLU (the chapter)": lambda w: ode.AntisymmetricSigma(
        w, activation="relu"
    ),
    "antisymmetric, tanh": lambda w: ode.AntisymmetricSigma(w, activation="tanh"),
    "-K^T tanh(K . + b)": NegKTK,
}
y_start = ode.start_pair(torch.randn(1, 8, 8, 8))
variant_rows = {}
for name, make_F in midpoint_variants.items():
    torch.manual_seed(0)
    stack = midpoint_stack(make_F)
    with torch.no_grad():
        out = stack(y_start)
    variant_rows[name] = (
        out.abs().max().item() / y_start.abs().max().item(),
        check_inverse_rel(stack, y_start),
    )
show_table(
    [
        "Midpoint F",
        "largest feature after 100 blocks / at the start",
        "float32 reconstruction error (relative)",
    ],
    [[n, f"{g:.3g}", f"{e:.1e}"] for n, (g, e) in variant_rows.items()],
)
growth_tanh = variant_rows["antisymmetric, tanh"][0]
growth_neg = variant_rows["-K^T tanh(K . + b)"][0]
assert (
    growth_tanh < variant_rows["antisymmetric, ReLU (the chapter)"][0]
    and growth_tanh < growth_neg
)
glue("ex3_growth_tanh", growth_tanh, display=False)
glue("ex3_growth_neg", growth_neg, display=False)

# %% [markdown]
# ```{admonition} Solution 3 (the Midpoint network's F)
# :class: dropdown
#
# The antisymmetric layer with $\tanh$ keeps the state bounded (the largest
# feature changes by a factor {glue:text}`ex3_growth_tanh:.3g` over 100 blocks):
# its Jacobian $D(K - K^\top)$ has imaginary eigenvalues, and $\tanh$, unlike
# ReLU, is odd, so the updates have no sign bias that pumps every feature up.
# $-K^\top\tanh(K\cdot + b)$ has a symmetric negative semidefinite Jacobian,
# real eigenvalues $\le 0$, exactly the case of exercise 1: the parasitic root
# makes the state oscillate and grow (factor {glue:text}`ex3_growth_neg:.3g`), and
# the reconstruction error grows with it. The right choice for a Midpoint network
# is an $F$ with imaginary eigenvalues and an odd activation.
# ```

# %% tags=["hide-cell", "nbval-ignore-output"]
torch.manual_seed(0)
leapfrog_stack = revlib.ReversibleSequence(
    [ode.LeapfrogBlock(8, h=0.1) for _ in range(100)]
)
y0 = torch.randn(1, 8, 8, 8)
starts = {
    "Y_-1 = Y_0 (at rest)": ode.start_pair(y0),
    "Y_-1 = 0 (the report's first step)": torch.cat([torch.zeros_like(y0), y0], 1),
}
start_rows = {}
for name, pair in starts.items():
    with torch.no_grad():
        out = leapfrog_stack(pair)
    start_rows[name] = (
        ode.end_pair(out).abs().max().item() / y0.abs().max().item(),
        check_inverse_rel(leapfrog_stack, pair),
    )
show_table(
    [
        "first step",
        "largest feature of Y_100 / of Y_0",
        "float32 reconstruction error (relative)",
    ],
    [[n, f"{g:.3g}", f"{e:.1e}"] for n, (g, e) in start_rows.items()],
)
rest, zero = (
    start_rows["Y_-1 = Y_0 (at rest)"],
    start_rows["Y_-1 = 0 (the report's first step)"],
)
assert zero[0] > rest[0] and zero[1] > rest[1]
glue("ex4_growth_rest", rest[0], display=False)
glue("ex4_growth_zero", zero[0], display=False)
glue("ex4_err_rest", rest[1], display=False)
glue("ex4_err_zero", zero[1], display=False)

# %% [markdown]
# ```{admonition} Solution 4 (starting Leapfrog with Y₋₁ = 0)
# :class: dropdown
#
# With $Y_{-1} = 0$ the first step is $Y_1 = 2Y_0 - h^2 K^\top\sigma(KY_0 + b)$: the
# state doubles at once and then moves with the velocity $Y_0/h$, far from the
# rest the ODE starts from. After 100 blocks the largest feature is
# {glue:text}`ex4_growth_zero:.3g` times that of $Y_0$, against
# {glue:text}`ex4_growth_rest:.3g` when starting at rest. The reconstruction still
# works, since the block is invertible whatever the pair; its relative float32
# error is {glue:text}`ex4_err_zero:.1e` against {glue:text}`ex4_err_rest:.1e`,
# larger because the states it must subtract are larger. What changes most is the
# trajectory that the network computes, which no longer discretises the ODE
# started at rest from $Y_0$.
# ```

# %% tags=["hide-cell", "nbval-ignore-output"]
smooth_rows = {}
for rate_try in (0.0, 1e-3, 1e-2):
    torch.manual_seed(0)
    model = hamiltonian_net()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(
            model(x_train), y_train
        ) + weight_smoothness(model, rate=rate_try)
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc_te = (model(x_test).argmax(1) == y_test).float().mean().item()
        K1s = torch.stack([b.F.fn.weight.detach() for b in model[1].blocks])
        roughness = (K1s[1:] - K1s[:-1]).pow(2).sum().item()
    smooth_rows[rate_try] = (acc_te, roughness, K1s[:, 0, 0].tolist())
fig, ax = plt.subplots(figsize=(5, 3))
for rate_try, (_, _, entries) in smooth_rows.items():
    ax.plot(range(1, BLOCKS + 1), entries, "o-", ms=3, label=f"rate {rate_try:g}")
ax.set_xlabel("block")
ax.set_ylabel("K1[0, 0]")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
show_table(
    [
        "rate",
        "test accuracy",
        "sum over blocks of the squared norm of K1(j+1) - K1(j)",
    ],
    [[f"{r:g}", f"{a:.3f}", f"{s:.3g}"] for r, (a, s, _) in smooth_rows.items()],
)
assert smooth_rows[1e-2][1] < smooth_rows[1e-3][1] < smooth_rows[0.0][1]
assert (
    abs(smooth_rows[1e-3][0] - smooth_rows[0.0][0]) < 0.03
    and smooth_rows[1e-2][0] < smooth_rows[0.0][0] - 0.1
)
glue("ex5_rough_0", smooth_rows[0.0][1], display=False)
glue("ex5_rough_2", smooth_rows[1e-2][1], display=False)
glue("ex5_acc_0", smooth_rows[0.0][0], display=False)
glue("ex5_acc_2", smooth_rows[1e-2][0], display=False)
glue("ex5_rough_1", smooth_rows[1e-3][1], display=False)
glue("ex5_acc_1", smooth_rows[1e-3][0], display=False)

# %% [markdown]
# ```{admonition} Solution 5 (weight smoothness on the spirals)
# :class: dropdown
#
# The folded cell retrains the two-spiral Hamiltonian network with the depth
# penalty at three rates and plots one entry of $K_1$ against the block index.
# The penalty makes the kernels smoother in depth: the summed squared differences
# between neighbours drop from {glue:text}`ex5_rough_0:.3g` at rate 0 to
# {glue:text}`ex5_rough_1:.3g` at rate 1e-3 and {glue:text}`ex5_rough_2:.3g` at
# rate 1e-2. At 1e-3 the test accuracy is unchanged within this single run's
# noise ({glue:text}`ex5_acc_1:.3f` against {glue:text}`ex5_acc_0:.3f`); at 1e-2
# the penalty dominates the loss, the kernels become nearly constant in depth, and
# the test accuracy falls to {glue:text}`ex5_acc_2:.3f`. So the penalty changes
# both, and only a small rate buys smoothness for free.
# ```
