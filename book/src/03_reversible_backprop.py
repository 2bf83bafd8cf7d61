# %% [markdown]
# (ch-backprop)=
# # Reversible backprop: Algorithm 1, derived, implemented and checked
#
# {ref}`ch-coupling` showed that a RevNet block's input can be recomputed from its output.
# This chapter turns that into a backward pass that stores no block activations:
# from a block's output and the gradient of the loss with respect to that output,
# it reconstructs the block's input and computes the gradients with respect to
# the input and to the parameters of F and G. This is Algorithm 1 of
# {cite:t}`gomez2017revnet`. We derive it step by step, read the implementation in
# `revlib`, check its gradients against ordinary autograd (BatchNorm and dropout
# included), measure what it costs in memory, and read what it costs in time from
# the repository's benchmark.

# %%
import copy
import inspect
import json
import random
import statistics
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import revlib
from revlib import AdditiveCoupling, ReversibleSequence
from revlib.core.blocks import ReversibleBlock
from revlib.core.memory import saved_tensor_bytes
from revlib.core.replay import checkpoint_updating_stats_once
from revlib.harness import alive
from revlib.harness.figures import show_table
from revlib.harness.notebook import glue
from revlib.harness.schematics import draw_reversible_backward

_ = torch.manual_seed(0)

# %% [markdown]
# ## The gradient equations
#
# The RevNet block computes, naming the intermediate sum $z_1$,
#
# $$
# z_1 = x_1 + F(x_2), \qquad y_2 = x_2 + G(z_1), \qquad y_1 = z_1 .
# $$ (eq-block-z1)
#
# Write $\bar v = \partial \mathcal{L}/\partial v$ for the gradient of the loss
# $\mathcal{L}$ with respect to any quantity $v$, $W_F$ and $W_G$ for the
# parameters of F and G, and $(\partial G/\partial z_1)^\top \bar y_2$ for the
# vector-Jacobian product that one backward pass through G computes. The backward
# step receives $y_1, y_2$ and $\bar y_1, \bar y_2$, and must return $x_1, x_2$
# (the input, for the next step down the chain), $\bar x_1, \bar x_2$ and
# $\bar W_F, \bar W_G$.
#
# **Reconstruct.** Exactly as in {eq}`eq-revnet-inverse`, undo the updates in reverse order:
#
# $$
# z_1 = y_1, \qquad x_2 = y_2 - G(z_1), \qquad x_1 = z_1 - F(x_2).
# $$ (eq-alg1-reconstruct)
#
# **Gradient of $z_1$.** The loss depends on $z_1$ along two paths: directly,
# since $y_1 = z_1$, and through $G$, since $y_2 = x_2 + G(z_1)$. By the chain rule
# the contributions add:
#
# $$
# \bar z_1 = \bar y_1 + \left(\frac{\partial G}{\partial z_1}\right)^{\!\top} \bar y_2 .
# $$ (eq-alg1-dz1)
#
# **Gradient of $x_2$.** $x_2$ also has two paths: into $y_2$ with the identity,
# and into $z_1$ through $F$:
#
# $$
# \bar x_2 = \bar y_2 + \left(\frac{\partial F}{\partial x_2}\right)^{\!\top} \bar z_1 .
# $$ (eq-alg1-dx2)
#
# **Gradient of $x_1$.** $x_1$ enters only $z_1 = x_1 + F(x_2)$, with the
# identity:
#
# $$
# \bar x_1 = \bar z_1 .
# $$
#
# **Parameter gradients.** $W_G$ acts only through $G(z_1)$, which is added to
# $y_2$; $W_F$ only through $F(x_2)$, which is added to $z_1$:
#
# $$
# \bar W_G = \left(\frac{\partial G}{\partial W_G}\right)^{\!\top} \bar y_2, \qquad
# \bar W_F = \left(\frac{\partial F}{\partial W_F}\right)^{\!\top} \bar z_1 .
# $$ (eq-alg1-dW)
#
# **Order of evaluation.** Every right-hand side needs only quantities computed
# before it. Evaluate $G(z_1)$ once, with autograd recording: it gives $x_2$, and
# one backward pass through it with $\bar y_2$ gives both
# $(\partial G/\partial z_1)^\top \bar y_2$ and $\bar W_G$. Then evaluate $F(x_2)$
# once: it gives $x_1$, and one backward pass with $\bar z_1$ gives
# $(\partial F/\partial x_2)^\top \bar z_1$ and $\bar W_F$. So the backward step
# evaluates F and G *once each*, plus the two backward passes that ordinary
# backprop would do anyway. Applied from the last block to the first, it needs
# only the chain's output: nothing inside the chain is stored
# ({numref}`fig-reversible-backward`; {numref}`fig-alive-animation` steps through
# what is held in memory meanwhile, beside autograd and checkpointing).
#
# Substituting {eq}`eq-alg1-dz1` into {eq}`eq-alg1-dx2` gives, in one line,
#
# $$
# \bar x_2 = \bar y_2 + \left(\frac{\partial F}{\partial x_2}\right)^{\!\top} \bar y_1
#   + \left(\frac{\partial F}{\partial x_2}\right)^{\!\top}
#     \left(\frac{\partial G}{\partial z_1}\right)^{\!\top} \bar y_2 :
# $$ (eq-alg1-dx2-expanded)
#
# the transposed Jacobian of G is applied *before* that of F, the reverse of the
# order in which the forward applies them.
#
# ```{note}
# A widely read blog-post review of Gomez et al. {cite:p}`royer2019revnetnotes`
# writes this product (in row-vector notation) as
# $\bar y_{n,2}\big(1 + \frac{\partial F}{\partial y_{n,2}} \frac{\partial G}{\partial y_{n,1}}\big)$
# in its Table 1. The factors are in the wrong order (row-vector notation needs
# $\frac{\partial G}{\partial y_{n,1}}\frac{\partial F}{\partial y_{n-1,2}}$),
# and F's Jacobian is taken at $y_{n,2}$ where F's argument is the block's input
# half $y_{n-1,2}$. Its gradient of $\theta_F$ has the same order slip. The
# derivation above, and the float64 check below, are the reference.
# ```

# %% tags=["remove-output"]
fig = draw_reversible_backward(blocks=4)
glue("fig_reversible_backward", fig, display=False)
plt.show()

# %% [markdown]
# ```{glue:figure} fig_reversible_backward
# :name: fig-reversible-backward
#
# Algorithm 1 on a chain of four blocks. The forward keeps only the chain's
# output $x^{(4)}$. The backward walks from the top: each step rebuilds the
# block's input with {eq}`eq-alg1-reconstruct` (one evaluation of G, then of F),
# takes the two vector-Jacobian products {eq}`eq-alg1-dz1`--{eq}`eq-alg1-dW`,
# and hands the rebuilt input and its gradient to the step below. At any time
# one block's internals are alive.
# ```
#
# ### What each schedule holds, step by step
#
# "Nothing inside the chain is stored" is a statement about lifetimes: which
# tensors exist at each moment of a training step. We can work the lifetimes out
# rather than draw them. `revlib.harness.alive` writes one training step of a chain
# of blocks as a list of steps, each naming the tensors it *uses* and those it
# *creates*, for three schedules: autograd (every block keeps its internals for the
# backward), checkpointing (every block keeps its input and recomputes its
# internals in the backward) and Algorithm 1 (only the output is kept; each block's
# input is rebuilt from its output). No step says what to free. The replay frees
# each tensor after the last step that uses it, as reference counting does, and
# that gives the set of tensors alive during every step. The names: $x_0$ is the
# chain's input and $x_i$ block $i$'s output, $a_i$ stands for everything autograd
# saves inside block $i$ (one box, however many tensors that is in a real block;
# {ref}`sec-memory-depth` counts the bytes), and $g_i$ is the gradient
# $\bar x_i$. Parameters and their gradients are the same in all three schedules
# and are left out. Here is Algorithm 1's schedule for four blocks, as the replay
# receives it:

# %%
for step in alive.schedule("reversible", blocks=4):
    uses, makes = ", ".join(step.uses), ", ".join(step.creates)
    print(f"{step.action:31s} uses {uses:8s}  makes {makes}")
chain_lengths = range(1, 65)
peaks = {m: [alive.peak(m, n) for n in chain_lengths] for m in alive.SCHEDULES}
print("largest number of tensors alive during a step, for 4 and 64 blocks:")
for m in alive.SCHEDULES:
    print(f"  {m:10s} {peaks[m][3]:4g} {peaks[m][63]:5g}")
# autograd: x0..xN, a1..aN and two gradients at once
assert peaks["autograd"] == [2 * n + 2 for n in chain_lengths]
# checkpointing: the N block inputs, one block's internals and two gradients
assert peaks["checkpoint"] == [n + 3 for n in chain_lengths]
# Algorithm 1: one block's internals and three activation-sized tensors, whatever N
assert set(peaks["reversible"]) == {4}

# %% [markdown]
# For every length from 1 to 64 blocks the replay's peaks follow simple formulas,
# which the cell asserts: autograd holds $2N + 2$ tensors at its peak (all $N + 1$
# activations, all $N$ blocks' internals and a gradient), checkpointing $N + 3$
# (the block inputs, one block's internals, two gradients), and Algorithm 1 four,
# whatever $N$: one block's internals and three tensors of an activation's size
# (while a block's input is rebuilt: its output, the rebuilt input and the
# output's gradient; while its products are taken: the rebuilt input and two
# gradients). {numref}`fig-alive-animation` plays the three schedules side by
# side, one frame per step.

# %% tags=["remove-output", "nbval-ignore-output"]
fig, anim = alive.animate_schedules(blocks=4, dpi=80)
movie = alive.animation_html(  # matplotlib's to_jshtml, frames in 32 colours
    anim,
    "[An animation, shown on the book's web page and in Jupyter: "
    "the next figure draws the same counts.]",
)
plt.close(fig)
glue("anim_alive", movie)  # shown here in Jupyter; the book shows it below

# %% [markdown]
# ```{glue:figure} anim_alive
# :name: fig-alive-animation
#
# One training step of a chain of four blocks under autograd (left),
# checkpointing (middle) and Algorithm 1 (right); press play, or step with the
# arrows. A filled box is a tensor alive during the step (orange: made in the
# forward, blue: made again in the backward, green: a gradient); a bold edge
# marks what the step uses or makes. Autograd's column fills during the forward
# and empties during the backward; checkpointing keeps a row of inputs and one
# block's internals at a time; Algorithm 1 never holds more than four boxes. In
# a static copy of this page (a PDF) the animation is missing:
# {numref}`fig-alive-counts` plots the same counts.
# ```

# %% tags=["remove-output"]
fig, counts = alive.plot_alive_counts(blocks=4, depths=[1, 2, 4, 8, 16, 32, 64])
assert all(max(counts[m]) == peaks[m][3] for m in alive.SCHEDULES)
glue("fig_alive_counts", fig, display=False)
plt.show()

# %% [markdown]
# ```{glue:figure} fig_alive_counts
# :name: fig-alive-counts
#
# The counts of {numref}`fig-alive-animation`, computed by the replay. Left:
# tensors alive during each step of one training step of four blocks (F: a
# forward step, L: the loss, R: the backward's recomputation, B: its
# vector-Jacobian products; autograd has nothing to recompute and holds what it
# held). Right: the largest count against the number of blocks: $2N + 2$ for
# autograd, $N + 3$ for checkpointing, 4 for Algorithm 1.
# ```
#
# ## The equations, as code
#
# Here is one step written directly from the equations, for one block whose F and
# G are small convolutional networks, checked in float64 against ordinary
# autograd on the same block.


# %% tags=["nbval-ignore-output"]
def algorithm1_step(F: nn.Module, G: nn.Module, y: torch.Tensor, dy: torch.Tensor):
    """One backward step of a RevNet block: returns x, dx and the gradients of F's and
    G's parameters."""
    y1, y2 = y.chunk(2, dim=1)
    dy1, dy2 = dy.chunk(2, dim=1)
    z1 = y1.detach().requires_grad_(True)
    g = G(z1)  # the one evaluation of G
    x2 = (y2 - g).detach().requires_grad_(True)  # x2 = y2 - G(z1)
    dz1_from_g, *dW_G = torch.autograd.grad(g, [z1, *G.parameters()], dy2)
    dz1 = dy1 + dz1_from_g  # dz1 = dy1 + (dG/dz1)^T dy2
    f = F(x2)  # the one evaluation of F
    x1 = z1.detach() - f.detach()  # x1 = z1 - F(x2)
    dx2_from_f, *dW_F = torch.autograd.grad(f, [x2, *F.parameters()], dz1)
    dx2 = dy2 + dx2_from_f  # dx2 = dy2 + (dF/dx2)^T dz1
    dx1 = dz1  # dx1 = dz1
    return torch.cat([x1, x2.detach()], 1), torch.cat([dx1, dx2], 1), dW_F, dW_G


def small_net(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(channels, channels, 3, padding=1),
    )


block = AdditiveCoupling(small_net(3), small_net(3)).double()
x = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
y = block(x)
dy = torch.randn_like(y)
y.backward(dy)  # ordinary autograd, for reference

x_rec, dx, dW_F, dW_G = algorithm1_step(block.F, block.G, y.detach(), dy)
step_errors = {
    "x (reconstructed)": (x_rec - x).abs().max().item(),
    "dx": (dx - x.grad).abs().max().item(),
    "dW_F": max(
        (a - p.grad).abs().max().item()
        for a, p in zip(dW_F, block.F.parameters(), strict=True)
    ),
    "dW_G": max(
        (a - p.grad).abs().max().item()
        for a, p in zip(dW_G, block.G.parameters(), strict=True)
    ),
}
for name, err in step_errors.items():
    print(f"{name:18s} largest difference from autograd: {err:.1e}")
assert max(step_errors.values()) < 1e-12

# %% [markdown]
# Reconstruction and all four gradients agree with autograd to float64 rounding.
#
# ## The implementation in revlib
#
# `revlib` writes the same step as `AdditiveCoupling.backward_step`. The tensor
# `tape` holds what the forward recorded so that the recomputation sees what the
# forward saw: `tape.replay(name, fn, x)` evaluates `fn(x)` with the forward's
# random-number state (for dropout), under the forward's autocast state and
# train/eval modes, and without updating any buffer again (BatchNorm's running
# statistics were already updated once in the forward). `grads_for` is one call of
# `torch.autograd.grad` that returns the input gradient and the parameter
# gradients together. The two lines before `return` do what `torch.cat` did in
# `algorithm1_step` without copying: inside a chain, the step before this one
# splits `x` again at once, so `x` travels as `Halves`, two tensors of their own,
# and the gradient's second half is added straight into its place. G's replay
# takes $y_1$ contiguous, the layout the forward's G received (the halves a step
# hands on already are; only the chain's saved output is copied): BatchNorm's
# reduction order depends on the strides it reads, so the replay runs the
# forward's kernels in the forward's order.

# %% tags=["nbval-ignore-output"]
print(inspect.getsource(AdditiveCoupling.backward_step))

# %% [markdown]
# Each block of the chain is one `torch.autograd.Function` node. Its forward runs
# the block under `torch.no_grad()` (no graph, so nothing is saved); only the last
# block keeps its output `y`. Its backward takes the block's output, rebuilt by
# the next block's backward (or, for the last block, the saved `y`), runs the step
# above, and hands the rebuilt input to the block before it; the input gradient
# flows to that block through autograd as usual. (The parameters are inputs of
# each node, so their gradients reach `.grad` through the autograd engine; the
# checks around the step are the subject of the appendix {ref}`app-engine`.)

# %% tags=["nbval-ignore-output"]
print(inspect.getsource(revlib.core.engine.function.BlockFunction.backward))

# %% [markdown]
# ## Gradient checks
#
# ### float64: `torch.autograd.gradcheck`
#
# `gradcheck` compares the backward's gradients with finite differences of the
# forward, for the input and, here, every parameter of a chain of three blocks in
# mode `"reversible"`. To show the check has teeth, a block whose backward step
# scales the parameter gradients by 1.01 must fail it.


# %%
def tiny_net(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.Tanh())


chain = ReversibleSequence(
    [AdditiveCoupling(tiny_net(2), tiny_net(2)) for _ in range(3)]
).double()
x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
params = list(chain.parameters())
# gradcheck perturbs its inputs in place, so passing the parameters themselves checks
# their gradients too
passed = torch.autograd.gradcheck(
    lambda x, *ps: chain(x), (x, *params), fast_mode=True
)


class WrongGradients(AdditiveCoupling):
    """A deliberately broken backward step: parameter gradients 1% too large."""

    def backward_step(self, y, dy, tape):
        x, dx, grads = super().backward_step(y, dy, tape)
        return x, dx, [(p, None if g is None else 1.01 * g) for p, g in grads]


broken = ReversibleSequence(
    [WrongGradients(tiny_net(2), tiny_net(2))]
).double()  # one block: a failing check is slow
broken_passed = torch.autograd.gradcheck(
    lambda x, *ps: broken(x),
    (x, *broken.parameters()),
    fast_mode=True,
    raise_exception=False,
)
print(
    f"gradcheck, input and {len(params)} parameter tensors, "
    f"mode 'reversible': {passed}"
)
print(f"gradcheck of the deliberately wrong backward: {broken_passed}")
assert passed is True and broken_passed is False

# %% [markdown]
# ### float32: a RevNet-like stack against mode `"autograd"`
#
# Now a stack like the ones RevNets are built of: 8 blocks on 32 channels, F and G
# each BN-ReLU-conv-BN-ReLU-conv (pre-activation, as in the official RevNet code),
# a batch of 8 images of 8 x 8, float32, in training mode. We deep-copy it into the
# three modes, run one forward and backward of the same loss in each, and compare
# every gradient with mode `"autograd"` by the relative error
# $\lVert g - g_{\text{autograd}} \rVert / \lVert g_{\text{autograd}} \rVert$,
# taking the largest over the input gradient and all parameter gradients. We do it
# for 20 random initialisations. The helper also remembers the input of every
# ReLU in its last call (for the reversible mode, the recomputation in the
# backward), and counts the ReLU inputs whose sign differs from the forward's in
# mode `"autograd"`; the next section explains why.


# %% tags=["nbval-ignore-output"]
def preact_half(channels: int, dropout: float = 0.0) -> nn.Sequential:
    """F or G of a RevNet basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 (optionally
    dropout)."""
    layers = [
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
    ]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def revnet_stack(
    depth: int, channels: int, dropout: float = 0.0
) -> ReversibleSequence:
    half = channels // 2
    return ReversibleSequence(
        [
            AdditiveCoupling(preact_half(half, dropout), preact_half(half, dropout))
            for _ in range(depth)
        ]
    )


def run_mode(
    base: ReversibleSequence, x: torch.Tensor, mode: str, seed: int = 0, **options
) -> SimpleNamespace:
    """A copy of `base` in `mode`, one forward and backward of mean(y^2) under a fixed
    seed.

    Returns the model, its gradients (input and parameters), the global RNG state
    after the step, and each ReLU's input in its last call.
    """
    model = copy.deepcopy(base)
    model.mode = mode
    for name, value in options.items():
        setattr(model, name, value)
    relu_inputs = {}
    relus = {id(m): n for n, m in model.named_modules() if isinstance(m, nn.ReLU)}

    def remember(module, args, out):
        # a global hook: it sees every call, the recomputation's included (a hook on
        # the ReLU would not)
        if id(module) in relus:
            relu_inputs[relus[id(module)]] = args[0].detach().clone()

    handle = torch.nn.modules.module.register_module_forward_hook(remember)
    torch.manual_seed(seed)
    xg = x.clone().requires_grad_(True)
    try:
        model(xg).square().mean().backward()
    finally:
        handle.remove()
    grads = {"input": xg.grad, **{n: p.grad for n, p in model.named_parameters()}}
    return SimpleNamespace(
        model=model, grads=grads, rng=torch.get_rng_state(), relu_inputs=relu_inputs
    )


def rel_error(run: SimpleNamespace, ref: SimpleNamespace) -> float:
    """Largest relative error, over the input gradient and every parameter
    gradient."""
    return max(
        ((run.grads[k] - g).norm() / g.norm()).item() for k, g in ref.grads.items()
    )


def relu_flips(run: SimpleNamespace, ref: SimpleNamespace) -> int:
    """ReLU inputs that are positive in one run and not in the other."""
    return sum(
        int(((run.relu_inputs[k] > 0) != (a > 0)).sum())
        for k, a in ref.relu_inputs.items()
    )


x = torch.randn(8, 32, 8, 8)
checks = []
N_INITS = 20
for seed in range(N_INITS):
    torch.manual_seed(seed)
    base = revnet_stack(depth=8, channels=32)
    runs = {mode: run_mode(base, x, mode) for mode in revlib.MODES}
    if seed == 0:
        models = {
            mode: run.model for mode, run in runs.items()
        }  # for the BatchNorm check below
    checks.append(
        {
            "seed": seed,
            "reversible": rel_error(runs["reversible"], runs["autograd"]),
            "checkpoint": rel_error(runs["checkpoint"], runs["autograd"]),
            "flips": relu_flips(runs["reversible"], runs["autograd"]),
        }
    )
n_tensors = len(runs["autograd"].grads)
print(
    f"largest relative error over {n_tensors} gradient tensors, "
    "and ReLU decisions that differ in the recomputation"
)
for c in checks:
    print(
        f"init {c['seed']:2d}: reversible {c['reversible']:.1e}, "
        f"checkpoint {c['checkpoint']:.1e}, flips {c['flips']}"
    )
flip_free = [c for c in checks if c["flips"] == 0]
flipped = [c for c in checks if c["flips"] > 0]
print(f"initialisations with at least one flip: {len(flipped)} of {N_INITS}")
assert flip_free, "every initialisation had a ReLU flip (see the next section)"
assert all(c["reversible"] <= 1e-5 for c in flip_free)
assert all(c["checkpoint"] <= 1e-5 for c in checks)
glue("rev_grad_rel_error", max(c["reversible"] for c in flip_free), display=False)
glue("n_flip_free", len(flip_free), display=False)
glue("n_flipped", len(flipped), display=False)
glue("n_inits", N_INITS, display=False)
glue(
    "flip_error_min",
    min((c["reversible"] for c in flipped), default=float("nan")),
    display=False,
)
glue(
    "flip_error_max",
    max((c["reversible"] for c in flipped), default=float("nan")),
    display=False,
)

# %% [markdown]
# In {glue:text}`n_flipped` of the {glue:text}`n_inits` initialisations at least
# one ReLU decision changed in the recomputation, and the largest relative error
# there was between {glue:text}`flip_error_min:.1e` and
# {glue:text}`flip_error_max:.1e` (the next section explains why). In the other
# {glue:text}`n_flip_free`, the reversible gradients differ from autograd's by at
# most {glue:text}`rev_grad_rel_error:.1e` in relative terms (the cell asserts at
# most $10^{-5}$): float32 rounding, coming from the reconstructed activations,
# which differ from the stored ones in the last bits ({ref}`ch-coupling`). These
# counts are this machine's: which inputs land within rounding of zero depends on
# the CPU's kernels. Checkpointing recomputes from stored inputs, so its gradients
# are those of autograd in every initialisation.
#
# (sec-relu-kink)=
# ### Where float32 reconstruction shows: ReLU's kink
#
# A reconstructed activation differs from the forward's by a few units in the last
# place. Almost always that changes the gradient by the same few units. But a ReLU
# input that was within that distance of zero in the forward can land on the other
# side of zero in the recomputation, and there the gradient of a ReLU network jumps:
# that element's gradient is passed through in one run and blocked in the other.
# What the reversible backward computes is autograd's formula for the gradient, the
# chain rule's product of one Jacobian per block, with each Jacobian evaluated at
# that block's rebuilt input instead of the forward's. Each rebuilt input carries
# rounding of its own, so the linearisation points are perturbed independently,
# block by block: the result is not the exact gradient of the network at any one
# input, near the forward's or not. Where no ReLU flips, each Jacobian moves by
# rounding and so does the product; where one flips, one entry of one Jacobian
# changes from 0 to 1 or back, and the gradient by far more than rounding. The
# more ReLU inputs there are, the likelier a flip; here is one larger batch (32
# images of 16 x 16, the same 8 blocks):

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
base_large = revnet_stack(depth=8, channels=32)
x_large = torch.randn(32, 32, 16, 16)
large = {
    mode: run_mode(base_large, x_large, mode) for mode in ["autograd", "reversible"]
}
ref, rev = large["autograd"], large["reversible"]
shift = max(
    (rev.relu_inputs[k] - a).abs().max().item() for k, a in ref.relu_inputs.items()
)
at_risk = sum(int((a.abs() <= shift).sum()) for a in ref.relu_inputs.values())
n_relu = sum(a.numel() for a in ref.relu_inputs.values())
flips = relu_flips(rev, ref)
large_error = rel_error(rev, ref)
print(
    f"ReLU inputs in one step: {n_relu:,d}; "
    f"largest change in the recomputation: {shift:.1e}"
)
print(
    f"inputs within that distance of zero: {at_risk}; decisions that flipped: {flips}"
)
print(f"largest relative gradient error: {large_error:.1e}")
assert shift < 1e-4  # reconstruction is accurate
assert at_risk < 1e-3 * n_relu  # only a handful of inputs lie that close to zero
if flips == 0:
    assert large_error <= 1e-5
glue("large_n_relu", n_relu, display=False)
glue("large_shift", shift, display=False)
glue("large_at_risk", at_risk, display=False)
glue("large_flips", flips, display=False)
glue("large_error", large_error, display=False)

# %% [markdown]
# In this run, of {glue:text}`large_n_relu:,` ReLU inputs the recomputation moved
# none by more than {glue:text}`large_shift:.1e`; {glue:text}`large_at_risk` lay
# that close to zero, {glue:text}`large_flips` of them flipped, and the largest
# relative gradient error was {glue:text}`large_error:.1e` (these numbers change
# with the machine and the initialisation; when a decision flips, the error can
# exceed $10^{-5}$ by orders of magnitude). This is not an error of the backward: the float64 `gradcheck` above passes, and float64
# reconstruction errors are at least a million times smaller than float32 ones
# ({ref}`ch-coupling`), so flips are then
# vanishingly rare, except for inputs that sit exactly on the kink, such as channels
# that are zero by construction ({ref}`ch-beyond` meets them in the i-RevNet's padding). It is the price of recomputing activations in float32 instead of storing
# them: gradients equal to autograd's up to rounding *and* up to the side of ReLU's
# kink on which a handful of inputs, indistinguishable from zero at float32
# precision, fall.
#
# (sec-batchnorm-stats)=
# ### BatchNorm running statistics
#
# A BatchNorm layer {cite:p}`ioffe2015batchnorm` in training mode normalises with the batch's statistics and
# also updates its *running* mean and variance (used at test time). A
# recomputation that runs F or G again would update them a second time. Here is
# that bug in plain `torch.utils.checkpoint`, the one place in this chapter where
# we use it directly: one step through a checkpointed conv-BN counts two batches.

# %%
conv_bn = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
inp = torch.randn(8, 4, 6, 6, requires_grad=True)
checkpoint(conv_bn, inp, use_reentrant=False).sum().backward()
plain_checkpoint_batches = conv_bn[1].num_batches_tracked.item()
print(
    "batches counted by BatchNorm after one step through "
    f"plain torch.utils.checkpoint: {plain_checkpoint_batches}"
)
assert plain_checkpoint_batches == 2

# %% [markdown]
# `revlib` runs every recomputation without a second update of the running
# statistics: in mode `"reversible"` the replay writes no buffer at all, and in its
# own mode `"checkpoint"` the recomputation runs with momentum 0 and the batch
# counter restored. After the step above, the BatchNorm buffers
# (running means, variances, batch counters) of the three models are compared bit
# for bit:

# %%
buffers = {mode: dict(m.named_buffers()) for mode, m in models.items()}
for mode in ["reversible", "checkpoint"]:
    same = all(
        torch.equal(buffers[mode][k], buffers["autograd"][k])
        for k in buffers["autograd"]
    )
    counters = {
        b.item()
        for k, b in buffers[mode].items()
        if k.endswith("num_batches_tracked")
    }
    print(
        f"mode {mode!r}: {len(buffers[mode])} buffers identical "
        f"to 'autograd': {same}; batches counted: {counters}"
    )
    assert same and counters == {1}

# %% [markdown]
# ### Dropout
#
# With dropout {cite:p}`srivastava2014dropout` inside F or G, the recomputation must draw the *same* mask as the
# forward, or the reconstructed input is wrong (the inverse subtracts a different
# $F(x_2)$) and so are the gradients. `revlib` records the random-number state
# before each call of F and G in the forward and replays it in the recomputation
# inside `torch.random.fork_rng`, so the global random stream is left exactly as
# ordinary autograd leaves it. We compare gradients and the global RNG state after
# the step under the same seed, and, as a control, switch the replay off
# (`preserve_rng_state=False`).

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
base_dropout = revnet_stack(depth=4, channels=32, dropout=0.2)
drop = {mode: run_mode(base_dropout, x, mode, seed=1) for mode in revlib.MODES}
drop["no replay"] = run_mode(
    base_dropout, x, "reversible", seed=1, preserve_rng_state=False
)

dropout_errors = {}
for name in ["reversible", "checkpoint", "no replay"]:
    dropout_errors[name] = rel_error(drop[name], drop["autograd"])
    same_rng = torch.equal(drop[name].rng, drop["autograd"].rng)
    flipped = relu_flips(drop[name], drop["autograd"])
    print(
        f"{name!r:12s}: largest relative gradient error {dropout_errors[name]:.1e}; "
        "RNG state after the step as autograd's: "
        f"{same_rng}; ReLU decisions that differ: {flipped}"
    )
    if name != "no replay":
        assert same_rng
        assert (
            dropout_errors[name] <= 1e-5 or flipped > 0
        )  # only a ReLU flip (see above) may exceed rounding
assert (
    dropout_errors["no replay"] > 0.1
)  # new masks in the recomputation: wrong gradients
glue("dropout_rev_error", dropout_errors["reversible"], display=False)
glue("dropout_no_replay_error", dropout_errors["no replay"], display=False)

# %% [markdown]
# With the masks replayed the gradients agree to {glue:text}`dropout_rev_error:.1e`
# and the global RNG state after the step is the one ordinary autograd leaves;
# without the replay the gradient error is {glue:text}`dropout_no_replay_error:.1f`
# (relative), which is to say the gradients are simply wrong.
#
# (sec-memory-depth)=
# ## Memory vs depth
#
# The three modes store different things for the backward. `"autograd"` keeps every
# tensor that F and G save; `"checkpoint"` keeps each block's input and recomputes
# the block's internals in the backward; `"reversible"` keeps only the chain's
# output. We count the bytes saved for the backward with
# `revlib.core.memory.saved_tensor_bytes` (parameters and buffers excluded) for chains of
# 2 to 64 blocks, 32 channels, batch 16, 8 x 8.

# %%
depths = [2, 4, 8, 16, 32, 64]
memory = {mode: {} for mode in revlib.MODES}
activation_bytes = x.numel() * x.element_size()  # one block input or output, A
for depth in depths:
    model = revnet_stack(depth, channels=32)
    for mode in revlib.MODES:
        model.mode = mode
        memory[mode][depth] = saved_tensor_bytes(model, x)
for mode in revlib.MODES:
    row = "  ".join(f"{memory[mode][d] / activation_bytes:6.2f}" for d in depths)
    print(f"{mode:10s} bytes / A at depths {depths}: {row}")

slope = {
    mode: [
        (memory[mode][b] - memory[mode][a]) // (b - a) for a, b in pairwise(depths)
    ]
    for mode in revlib.MODES
}
assert (
    len(set(memory["reversible"].values())) == 1
    and memory["reversible"][2] == activation_bytes
)
assert len(set(slope["autograd"])) == 1 and slope["autograd"][0] > 0  # exactly linear
assert all(
    memory["checkpoint"][d] == d * activation_bytes for d in depths
)  # one block input per block
glue("mem_rev_bytes", memory["reversible"][64], display=False)
glue("mem_autograd_2", memory["autograd"][2], display=False)
glue("mem_autograd_64", memory["autograd"][64], display=False)
glue("mem_checkpoint_64", memory["checkpoint"][64], display=False)
glue(
    "mem_autograd_per_block_A", slope["autograd"][0] / activation_bytes, display=False
)

# %% [markdown]
# At 64 blocks, mode `"autograd"` saves {glue:text}`mem_autograd_64:,` bytes
# (about {glue:text}`mem_autograd_per_block_A:.1f` activation tensors per block),
# mode `"checkpoint"` {glue:text}`mem_checkpoint_64:,` bytes (exactly one block
# input per block), and mode `"reversible"` {glue:text}`mem_rev_bytes:,` bytes, the
# same as at 2 blocks: one activation tensor, the chain's output. Checkpointing
# every block divides the memory by a constant; reversibility removes the
# dependence on depth. (A real RevNet also has non-reversible stage transitions
# whose inputs are stored; {ref}`ch-architectures` measures whole networks.)
# These are the three curves of {numref}`fig-memory-depth`, which we do not redraw.
#
# (sec-sqrt-checkpointing)=
# ### Checkpointing in segments: $O(\sqrt{L})$
#
# Checkpointing every block stores $L$ block inputs. {cite:t}`chen2016checkpoint`
# (after {cite:t}`martens2012hessianfree`) store fewer: cut the chain of $L$
# blocks into segments of $k$ blocks, keep only each segment's input, and in the
# backward recompute one segment at a time with ordinary autograd. After the
# forward $L/k$ inputs are kept; during the backward one segment's internals,
# $k$ blocks' worth, are alive on top. The sum $L/k \cdot A + k \cdot a$ ($A$ an
# activation tensor, $a$ one block's autograd bytes) is smallest near
# $k = \sqrt{L A / a}$, and then grows like $\sqrt{L}$, for about one extra
# forward. We build it from `revlib`'s BatchNorm-safe checkpoint helper with
# $k = \sqrt{L}$ and count, for each scheme, the bytes kept after the forward plus
# the largest set of internals that the backward recomputes at once (one block
# for per-block checkpointing and for the reversible backward, one segment here,
# none for autograd), from the measurements above. The table is therefore a
# *model* of the peak built from exactly counted saved bytes, not a peak
# measured by an allocator (a real step also holds parameters, gradients and
# temporaries).


# %% tags=["nbval-ignore-output"]
class SegmentCheckpointed(nn.Module):
    """A chain of blocks checkpointed in segments of `size` blocks: only each
    segment's input is kept."""

    def __init__(self, blocks: list[nn.Module], size: int) -> None:
        super().__init__()
        self.segments = nn.ModuleList(
            nn.Sequential(*blocks[i : i + size]) for i in range(0, len(blocks), size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for segment in self.segments:
            x = checkpoint_updating_stats_once(segment, segment, x)
        return x


per_block = slope["autograd"][0]  # one block's autograd bytes, a
square_depths = [4, 16, 64]
peak = {
    name: {}
    for name in [
        "autograd",
        "checkpoint every block",
        "checkpoint sqrt(L) segments",
        "reversible",
    ]
}
for depth in square_depths:
    size = int(depth**0.5)
    segmented = SegmentCheckpointed(
        list(revnet_stack(depth, channels=32).blocks), size
    )
    kept = saved_tensor_bytes(segmented, x)
    assert kept == depth // size * activation_bytes  # one input per segment
    peak["autograd"][depth] = memory["autograd"][depth]
    peak["checkpoint every block"][depth] = memory["checkpoint"][depth] + per_block
    peak["checkpoint sqrt(L) segments"][depth] = kept + memory["autograd"][size]
    peak["reversible"][depth] = memory["reversible"][depth] + per_block
show_table(
    ["scheme", *[f"L = {d}" for d in square_depths], "growth"],
    [
        [name, *[f"{v[d] / activation_bytes:.1f} A" for d in square_depths], growth]
        for (name, v), growth in zip(
            peak.items(), ["O(L)", "O(L)", "O(sqrt L)", "O(1)"], strict=True
        )
    ],
    caption="Modelled peak (not measured): "
    "bytes kept after the forward plus the largest recomputation, "
    "in activation tensors A",
)
growth_16_to_64 = {name: v[64] / v[16] for name, v in peak.items()}
assert (
    3.5 < growth_16_to_64["autograd"] < 4.5
    and 3 < growth_16_to_64["checkpoint every block"] < 4.5
)
assert (
    1.5 < growth_16_to_64["checkpoint sqrt(L) segments"] < 2.5
)  # four times deeper, about twice the memory
assert growth_16_to_64["reversible"] == 1
glue("sqrt_growth", growth_16_to_64["checkpoint sqrt(L) segments"], display=False)
glue("autograd_growth", growth_16_to_64["autograd"], display=False)

# %% [markdown]
# From 16 to 64 blocks, four times deeper, the memory of autograd grows
# {glue:text}`autograd_growth:.2f` times, that of $\sqrt{L}$-segment checkpointing
# {glue:text}`sqrt_growth:.2f` times, and that of the reversible backward not at
# all. {cite:t}`gomez2017revnet` summarise the options in their Table 1, quoted
# here (we measured the first, second and last rows' memory above; the
# $O(\log L)$ row, recursive checkpointing
# {cite:p}`chen2016checkpoint,griewank2000revolve`, is not implemented here):
#
# | technique | activation memory | compute |
# |---|---|---|
# | naive backprop | $O(L)$ | $O(L)$ |
# | checkpointing in segments | $O(\sqrt{L})$ | $O(L)$ |
# | recursive checkpointing | $O(\log L)$ | $O(L \log L)$ |
# | reversible blocks | $O(1)$ | $O(L)$ |
#
# The reversible backward gets $O(1)$ activation memory at $O(L)$ compute, the
# compute of checkpointing, but only for blocks that are invertible; the others
# must store their inputs, and checkpointing applies to any block.
#
# ## What it costs in time
#
# ### Counting evaluations
#
# Take one evaluation of F or G in the forward as one unit of work. A backward pass
# through a layer costs about two units, since it computes two products per layer:
# the vector-Jacobian product for the input and the one for the weights (for a
# convolution, two convolutions of the same size as the forward one). Ordinary
# training then costs $1 + 2 = 3$ units per block per step. The reversible backward
# evaluates F and G once more (to rebuild the activations it needs), so it costs
# $1 + 1 + 2 = 4$ units, $4/3$ of ordinary training. Checkpointing each block has
# the same count: it, too, runs every block once more in the backward. A generic
# reversible backward that first inverts the block (one evaluation of F and G) and
# then runs it forward again with autograd (a second one) costs $1 + 2 + 2 = 5$
# units, or $5/3$. These ratios count evaluations, not seconds. They predict time
# only as well as "a backward costs two forwards" holds, and it holds only on
# average over the layers of a network, at best: a convolution's backward is two
# convolutions, but a BatchNorm's or a ReLU's is an elementwise pass or two, and
# the kernels of a backward can be faster or slower than those of the forward. A
# step also does work that no count includes (the loss, the optimiser's update,
# allocating and freeing memory). So 4/3 is an estimate, not a bound; the
# measurements below show how far it holds.
#
# The evaluations are easy to count: a global forward pre-hook
# (`torch.nn.modules.module.register_module_forward_pre_hook`), which sees every
# call of every module, counts how often F and G are called in one training step.
# (A hook registered on F itself would not do: in mode `"reversible"` it runs once
# per step, as in mode `"autograd"`, and not again in the recomputation; see the
# appendix {ref}`app-engine`.) `GenericAdditive` below is the
# RevNet block with the generic backward step of `revlib.ReversibleBlock`
# (invert, then re-run the forward with autograd) instead of the fused Algorithm 1.


# %%
class GenericAdditive(AdditiveCoupling):
    """The RevNet block with the generic inverse-then-reforward backward step."""

    backward_step = ReversibleBlock.backward_step


def variants_of(base: ReversibleSequence) -> dict[str, ReversibleSequence]:
    out = {}
    for mode in ["autograd", "checkpoint", "reversible"]:
        out[mode] = copy.deepcopy(base)
        out[mode].mode = mode
    generic = copy.deepcopy(base)
    for i, b in enumerate(generic.blocks):
        generic.blocks[i] = GenericAdditive(b.F, b.G)
    out["reversible, generic step"] = generic
    return out


def evaluations_per_step(model: ReversibleSequence, x: torch.Tensor) -> float:
    calls = 0
    halves = {id(fn) for b in model.blocks for fn in (b.F, b.G)}

    def count(module, args):
        nonlocal calls
        calls += id(module) in halves

    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        model(x.clone().requires_grad_(True)).square().mean().backward()
    finally:
        handle.remove()
    return calls / (2 * len(model.blocks))


cost_model = {
    # evaluations of F and G per step (counted), plus 2 units for the backward pass
    name: evaluations_per_step(model, x)
    for name, model in variants_of(revnet_stack(4, channels=32)).items()
}
rows, theory = [], {}
for name, evals in cost_model.items():
    units = Fraction(evals) + 2
    theory[name] = units / 3
    rows.append([name, f"{evals:g}", str(units), str(theory[name])])
show_table(
    [
        "backward",
        "evaluations of F and G per step (counted)",
        "units (evaluations + 2 for backprop)",
        "cost / autograd",
    ],
    rows,
)
assert theory["autograd"] == 1
assert theory["reversible"] == Fraction(4, 3) and theory["checkpoint"] == Fraction(
    4, 3
)
assert theory["reversible, generic step"] == Fraction(5, 3)

# %% [markdown]
# The counted evaluations match the derivation: 1 for autograd, 2 for the fused
# reversible step and for checkpointing, 3 for the generic step, hence the ratios
# 1, 4/3, 4/3 and 5/3. These count only F and G; the additions, the
# concatenations and the bookkeeping of the reversible backward come on top.
#
# ### Measured
#
# This notebook times nothing itself. A step time taken while the notebook runs
# belongs to whatever CPU runs it and to whatever else that CPU is doing, and no
# assert could check it at a tolerance that holds on every machine. The timings
# here come from `benchmarks/step_time.py`, read from the results file its last
# run saved, `benchmarks/results/step_time_cpu.json` (run the script to measure
# your own machine, or a GPU with `--device cuda`). It times one training step
# (forward, backward of mean$(y^2)$, an SGD update with momentum) of a stack of
# blocks like the ones above, with the variants interleaved in a rotating order in
# every round so that a change in the machine's load reaches all of them; the
# size of the stack, the rounds and the machine are printed below. We compare a
# variant with autograd by the ratio of the medians of their step times, with a
# 95% bootstrap interval that resamples the rounds (computed here from the
# per-step times the file records).
#
# One variant is a reference rather than a method. The benchmark calls it the
# floor (`autograd_plus_forward`): each of its steps first runs the whole chain
# forward under `torch.no_grad()` and throws the result away, then takes an
# ordinary autograd step. It is autograd's step plus exactly one more evaluation of
# every F and G, the count's fourth unit, with nothing else changed: what a
# recomputing backward would cost if recomputing were a separate forward and
# added nothing else. It is a yardstick, not a lower bound: a method may well
# recompute more cheaply than a separate forward (see below).


# %%
def ratio_of_medians(times: dict, name: str, base: str) -> float:
    return statistics.median(times[name]) / statistics.median(times[base])


def bootstrap_interval(times: dict, name: str, base: str, draws: int = 2000):
    """95% bootstrap interval of the ratio of medians, resampling rounds."""
    rng, n = random.Random(0), len(times[base])
    values = []
    for _ in range(draws):
        rounds = [rng.randrange(n) for _ in range(n)]
        resampled = {k: [times[k][i] for i in rounds] for k in (name, base)}
        values.append(ratio_of_medians(resampled, name, base))
    values.sort()
    return values[int(0.025 * draws)], values[int(0.975 * draws) - 1]


LABELS = {
    "autograd": "autograd",
    "autograd_plus_forward": "autograd + one\nextra forward",
    "reversible": "revlib\nreversible",
    "reversible_no_rng": "revlib reversible,\nno RNG replay",
    "checkpoint": "revlib\ncheckpoint",
    "memcnn": "MemCNN\n(InvertibleModule)",
}


def step_time_ratios(bench: dict) -> SimpleNamespace:
    """Each variant's ratio of medians to autograd (eager) or to compiled autograd,
    its interval, and its ratio of median CPU times."""
    times, cpu = bench["all_seconds"], bench["median_cpu_seconds"]
    eager = [k for k in LABELS if k in times]
    compiled = [
        f"compiled_{k}"
        for k in ("autograd", "autograd_plus_forward", "reversible", "checkpoint")
        if f"compiled_{k}" in times
    ]
    base_of = {
        **dict.fromkeys(eager, "autograd"),
        **dict.fromkeys(compiled, "compiled_autograd"),
    }
    return SimpleNamespace(
        eager=eager,
        compiled=compiled,
        base_of=base_of,
        ratio={k: ratio_of_medians(times, k, b) for k, b in base_of.items()},
        interval={k: bootstrap_interval(times, k, b) for k, b in base_of.items()},
        cpu_ratio={k: cpu[k] / cpu[b] for k, b in base_of.items()},
    )


def draw_step_time(bench: dict, r: SimpleNamespace):
    fig, axes = plt.subplots(
        1,
        2,
        figsize=(10, 3.8),
        width_ratios=[len(r.eager), len(r.compiled)],
        sharey=True,
    )
    colors = ["0.6", "0.8", "tab:blue", "tab:cyan", "tab:orange", "tab:red"]
    for ax, names, title in [
        (axes[0], r.eager, "eager: / eager autograd"),
        (axes[1], r.compiled, "torch.compile(model): / compiled autograd"),
    ]:
        plain = [k.removeprefix("compiled_") for k in names]
        heights = [r.ratio[k] for k in names]
        bars = ax.bar(
            range(len(names)),
            heights,
            yerr=[
                [r.ratio[k] - r.interval[k][0] for k in names],
                [r.interval[k][1] - r.ratio[k] for k in names],
            ],
            capsize=4,
            color=[colors[list(LABELS).index(k)] for k in plain],
        )
        ax.bar_label(
            bars, labels=[f"{v:.2f}" for v in heights], padding=8, fontsize=8
        )
        ax.axhline(
            4 / 3, color="black", lw=0.8, ls="--", label="4/3, the evaluation count"
        )
        ax.set_xticks(range(len(names)), [LABELS[k] for k in plain], fontsize=7)
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("step time / autograd's")
    axes[0].set_ylim(0, 2.8)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(
        f"PyTorch {bench['torch']}, {bench['device']}; benchmarks/step_time.py, "
        f"run of {bench['date_utc'][:10]}; ratio of median step times, 95% intervals",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


step_file = Path("..") / "benchmarks" / "results" / "step_time_cpu.json"
bench = json.loads(step_file.read_text()) if step_file.exists() else None
if bench is None:
    print(f"{step_file} not found: run python benchmarks/step_time.py in a clone")
else:
    r = step_time_ratios(bench)
    seconds, load = bench["median_seconds"], bench["load_average_1min"]
    print(
        f"{bench['device']}, PyTorch {bench['torch']}, "
        f"run of {bench['date_utc'][:10]}; {bench['depth']} blocks, "
        f"{bench['width']} channels, batch {bench['batch']}, "
        f"{bench['size']} x {bench['size']}; {bench['repeats']} rounds after "
        f"{bench['warmup']} warm-up steps; load average {load['before']:.1f} before, "
        f"{load['after']:.1f} after, on {bench['hardware']['cpu_count']} cores"
    )
    show_table(
        [
            "variant",
            "median step",
            "ratio of medians",
            "95% interval",
            "CPU-time ratio",
        ],
        [
            [
                k,
                f"{1000 * seconds[k]:.0f} ms",
                f"{r.ratio[k]:.2f}",
                f"{r.interval[k][0]:.2f} to {r.interval[k][1]:.2f}",
                f"{r.cpu_ratio[k]:.2f}",
            ]
            for k in r.base_of
        ],
        caption="Ratio to autograd (eager rows) or compiled autograd (compiled rows)",
    )
    ratio, interval, floor = r.ratio, r.interval, "autograd_plus_forward"
    # one extra forward, and the rest of an autograd step in forwards
    extra_forward = seconds[floor] - seconds["autograd"]
    rest_in_forwards = (seconds["autograd"] - extra_forward) / extra_forward
    # the floor is 1 + (one forward) / (autograd's step), by construction
    assert abs(ratio[floor] - (1 + extra_forward / seconds["autograd"])) < 1e-9
    assert rest_in_forwards < 2 and ratio[floor] > 4 / 3
    # checkpointing: the floor, and less than 15 % above it
    assert 1 < ratio["checkpoint"] / ratio[floor] < 1.15
    rev_over_floor = seconds["reversible"] / seconds[floor]
    # paired per-round ratios to the floor: above it, by less than a tenth and a half
    (rev_low, rev_high), (old_low, old_high) = (
        bench["paired_ratio_to_floor_95_interval"][k]
        for k in ["reversible", "reversible@8abb1ff"]
    )
    assert 1 < rev_low and rev_high < 1.15
    # an engine with fewer checks (8abb1ff): the two intervals overlap
    assert rev_low < old_high and old_low < rev_high
    # compiled checkpointing: no faster than eager checkpointing; autograd sped up
    compile_speedup = seconds["autograd"] / seconds["compiled_autograd"]
    ckpt_compiled_vs_eager = seconds["compiled_checkpoint"] / seconds["checkpoint"]
    assert compile_speedup > 1.3 and 0.9 < ckpt_compiled_vs_eager < 1.2
    first_steps = bench["compile_seconds_first_two_steps"]
    assert first_steps["compiled_checkpoint"] < min(
        first_steps["compiled_autograd"], first_steps["compiled_reversible"]
    )
    saved = bench["saved_bytes"]
    for key in [floor, "reversible", "checkpoint", "memcnn"]:
        glue(f"bench_{key}", ratio[key], display=False)
        glue(f"bench_{key}_low", interval[key][0], display=False)
        glue(f"bench_{key}_high", interval[key][1], display=False)
        glue(f"bench_{key}_cpu", r.cpu_ratio[key], display=False)
    for key in [floor, "reversible", "checkpoint"]:
        glue(f"bench_compiled_{key}", ratio[f"compiled_{key}"], display=False)
    for key in ["compiled_autograd", "compiled_reversible", "compiled_checkpoint"]:
        glue(f"bench_first_steps_{key}", first_steps[key], display=False)
    glue("bench_date", bench["date_utc"][:10], display=False)
    glue("bench_torch", bench["torch"], display=False)
    glue("bench_load", load["before"], display=False)
    glue("bench_cores", bench["hardware"]["cpu_count"], display=False)
    glue("bench_extra_forward_ms", 1000 * extra_forward, display=False)
    glue("bench_autograd_ms", 1000 * seconds["autograd"], display=False)
    others = bench["load"]["other_cores_during"]
    assert others < bench["load"]["max_other_cores"]  # an idle machine
    timed = sum(sum(t) for t in bench["all_seconds"].values())
    assert bench["load"]["seconds_watched"] > timed  # the watch covered the timing
    glue("bench_other_cores", others, display=False)
    glue("bench_rev_over_floor", rev_over_floor, display=False)
    for name, value in [("rev", (rev_low, rev_high)), ("old", (old_low, old_high))]:
        glue(f"bench_{name}_floor_low", value[0], display=False)
        glue(f"bench_{name}_floor_high", value[1], display=False)
    glue("bench_rest_in_forwards", rest_in_forwards, display=False)
    glue("bench_saved_autograd_mib", saved["autograd"] / 2**20, display=False)
    glue("bench_saved_checkpoint_mib", saved["checkpoint"] / 2**20, display=False)
    glue("bench_compile_speedup", compile_speedup, display=False)
    glue("bench_ckpt_ms", 1000 * seconds["checkpoint"], display=False)
    glue(
        "bench_compiled_ckpt_ms", 1000 * seconds["compiled_checkpoint"], display=False
    )
    rev_paired = bench["paired_ratio_to_compiled_autograd"]["compiled_reversible"]
    bands = bench["paired_ratio_to_compiled_autograd_95_interval"]
    rev_band = bands["compiled_reversible"]
    assert rev_band[0] < rev_paired < rev_band[1]
    glue("bench_compiled_rev_paired", rev_paired, display=False)
    glue("bench_compiled_rev_low", rev_band[0], display=False)
    glue("bench_compiled_rev_high", rev_band[1], display=False)
    # the engine of 3 December 2026 (a358f0e), compiled in the same run
    early = bench["ratio_to_compiled_autograd"]["compiled_reversible@a358f0e"]
    assert early > ratio["compiled_reversible"]
    glue("bench_compiled_early_engine", early, display=False)

# %% tags=["remove-output"]
if bench is not None:
    fig = draw_step_time(bench, r)
    glue("fig_step_time", fig, display=False)
    plt.show()

# %% [markdown]
# ```{glue:figure} fig_step_time
# :name: fig-step-time
#
# One training step's time relative to autograd's, from the benchmark run of
# {glue:text}`bench_date` on the CPU named in the title: the ratio of the median
# step times, with 95% bootstrap intervals over rounds. Left: eager PyTorch,
# relative to eager autograd. Right: `torch.compile(model)`, relative to
# compiled autograd. Not measured by this notebook: read from
# `benchmarks/results/step_time_cpu.json`.
# ```
#
# In that run a reversible step cost {glue:text}`bench_reversible:.2f` times an
# ordinary one ({glue:text}`bench_reversible_low:.2f` to
# {glue:text}`bench_reversible_high:.2f`), checkpointing
# {glue:text}`bench_checkpoint:.2f` ({glue:text}`bench_checkpoint_low:.2f` to
# {glue:text}`bench_checkpoint_high:.2f`) and MemCNN's reversible module
# {glue:text}`bench_memcnn:.2f`; autograd plus one extra forward cost
# {glue:text}`bench_autograd_plus_forward:.2f`
# ({glue:text}`bench_autograd_plus_forward_low:.2f` to
# {glue:text}`bench_autograd_plus_forward_high:.2f`). The machine was idle:
# other processes used {glue:text}`bench_other_cores:.2f` of its
# {glue:text}`bench_cores` cores during the run (the benchmark measures this and
# refuses to write its results above 0.2 cores), which is why the intervals are
# narrow.
#
# Why the floor sits above 4/3: its ratio is $1 + f/s$, where $f$ is the time of
# one forward without a graph and $s$ that of an autograd step, and here $f$ was
# {glue:text}`bench_extra_forward_ms:.0f` ms (the difference of the two medians)
# of a {glue:text}`bench_autograd_ms:.0f` ms step. If the forward that builds a
# graph costs what the one without does, the rest of the step (backward, loss
# and update) cost {glue:text}`bench_rest_in_forwards:.2f` forwards, not the 2
# the count assumes, so one more forward added more than a third. A ratio under
# 4/3 is just as possible on another machine or network: a backward that costs
# more than two forwards, or work that every variant does once per step, pulls
# the ratio down.
#
# Checkpointing need not cost exactly the floor: the floor repeats the forward as a
# separate pass and changes nothing else, and a method need not. Checkpointing's
# forward builds no graph and keeps nothing inside the blocks; in the backward it
# recomputes one block and uses those internals at once, while they are fresh in the
# cache, where autograd writes every block's saved tensors during the forward and
# reads them back in the backward
# ({glue:text}`bench_saved_autograd_mib:.0f` MiB of saved tensors in this
# benchmark, against {glue:text}`bench_saved_checkpoint_mib:.0f` MiB of block
# inputs for checkpointing). In this run it came to
# {glue:text}`bench_checkpoint:.2f` against the floor's
# {glue:text}`bench_autograd_plus_forward:.2f`, and by the process's CPU time, which
# other processes disturb less, {glue:text}`bench_checkpoint_cpu:.2f` against
# {glue:text}`bench_autograd_plus_forward_cpu:.2f`: checkpointing costs one more
# forward, as counted, and some percent more. So does the reversible step:
# the per-round ratios put it at {glue:text}`bench_rev_floor_low:.3f` to
# {glue:text}`bench_rev_floor_high:.3f` times the floor (95 %;
# {glue:text}`bench_rev_over_floor:.3f` by the ratio of the two medians). An earlier
# version of the engine with fewer checks, timed in the same run, cost
# {glue:text}`bench_old_floor_low:.3f` to {glue:text}`bench_old_floor_high:.3f`
# times the floor: the two intervals overlap, so at this size the benchmark cannot
# tell the checks' cost from its noise. What the rest above the floor is made of,
# the algorithm or the engine around it, is measured in {ref}`sec-engine-share`.
#
# {cite:t}`gomez2017revnet` make the same count: about $4N$ operations for a
# reversible step against $3N$ for backprop, 33% more, the same overhead as
# checkpointing; they add that where a forward and a backward cost about the
# same, as they found on GPUs, the overhead is closer to 50%. MemCNN's README
# {cite:p}`leemput2019memcnn` lists CIFAR-10 training times that make its RevNets
# 1.2 to 1.5 times slower than the matching ResNets (our arithmetic on its quoted
# times; not measured here).
#
# Compiled, the picture changes, and the reason is what the benchmark compiles:
# `torch.compile` of the whole `ReversibleSequence`, as a user would call it.
# Compiled autograd ran {glue:text}`bench_compile_speedup:.2f` times faster than
# eager autograd: Dynamo traces the whole chain as one graph, which the compiler
# turns into fused code for the forward and the backward. `revlib` keeps its
# reversible engine eager under `torch.compile` and compiles what it calls (the
# appendix {ref}`app-engine` says why). In general that is each F and G on its
# own, two compiled calls each in the backward step (its replay and its
# backward), with the step's additions and subtractions eager between them. A
# block whose tape would record nothing, as here, does better: its forward is one
# compiled graph, and on the CPU so is its backward step ({ref}`sec-engine-share`
# says how, and what it gains). The compiled reversible step cost
# {glue:text}`bench_compiled_reversible:.2f` times compiled autograd's (the
# per-round ratios: median {glue:text}`bench_compiled_rev_paired:.2f`, 95 %
# interval {glue:text}`bench_compiled_rev_low:.2f` to
# {glue:text}`bench_compiled_rev_high:.2f`), against a compiled floor of
# {glue:text}`bench_compiled_autograd_plus_forward:.2f` (the engine of 3 December
# 2026, which compiled F and G but no whole block, cost
# {glue:text}`bench_compiled_early_engine:.2f` in the same run).
# Compiled checkpointing came off worst, at
# {glue:text}`bench_compiled_checkpoint:.2f`, and not because checkpointing costs
# more: nothing of it was compiled. Its step took
# {glue:text}`bench_compiled_ckpt_ms:.0f` ms compiled against
# {glue:text}`bench_ckpt_ms:.0f` ms eager, and its first two steps, which include
# compiling, {glue:text}`bench_first_steps_compiled_checkpoint:.1f` s against
# {glue:text}`bench_first_steps_compiled_autograd:.1f` s for autograd and
# {glue:text}`bench_first_steps_compiled_reversible:.1f` s for the reversible
# chain. The next cell shows why, on a chain of two small blocks, with a
# `torch.compile` backend that only counts the graphs Dynamo hands it, and once
# more with `fullgraph=True`, which makes Dynamo say why it stops instead of
# falling back.


# %%
def graphs_compiled(mode: str, fullgraph: bool = False) -> int:
    """How many graphs Dynamo hands the compiler for one training step of a chain
    of two blocks in `mode`."""
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward  # run the graph as traced, uncompiled

    chain = revnet_stack(2, channels=8)
    chain.mode = mode
    compiled = torch.compile(chain, backend=counting_backend, fullgraph=fullgraph)
    compiled(torch.randn(2, 8, 4, 4, requires_grad=True)).square().mean().backward()
    return len(graphs)


graph_counts = {mode: graphs_compiled(mode) for mode in ["autograd", "checkpoint"]}
try:
    graphs_compiled("checkpoint", fullgraph=True)
    refusal = "(none)"
except Exception as err:  # Dynamo's "Unsupported": what it could not trace
    refusal = str(err).splitlines()[0]
print(f"graphs Dynamo traced in one training step: {graph_counts}")
print(f"mode 'checkpoint' with fullgraph=True: {refusal}")
if (
    bench is not None and torch.__version__ == bench["torch"]
):  # the benchmark's PyTorch
    assert graph_counts == {"autograd": 1, "checkpoint": 0}
    assert "side effect" in refusal.lower()

# %% [markdown]
# With the benchmark's PyTorch, Dynamo traces mode `"autograd"` as one graph and
# mode `"checkpoint"` not at all, so that whole step runs eagerly. `revlib`'s
# checkpointing wraps each block in `torch.utils.checkpoint` with a small counter
# that tells the forward from the recomputation (so that BatchNorm's running
# statistics are updated once, {ref}`sec-batchnorm-stats`). Incrementing that
# counter is a side effect outside the checkpointed function, which Dynamo's
# checkpoint operator refuses to trace, as the message says; Dynamo then gives up
# on the frame and runs it eagerly. The compiled checkpoint step therefore costs
# what the eager one costs, measured against a compiled autograd step that got
# faster. That is a property of this implementation under `torch.compile`, not
# of checkpointing.
#
# (sec-engine-share)=
# #### What lies above the floor
#
# A reversible step that costs more than its floor pays for two things: Algorithm 1
# as it is run (the halves, the subtractions that rebuild each input, the
# gradients handed from G's backward to F's) and the engine around it (the tapes,
# the guards and checks, the Python of each block's step; the appendix
# {ref}`app-engine`). `benchmarks/engine_share.py` tells them apart. In one
# interleaved run on the same stack it times `revlib`'s engine beside Algorithm 1
# with no engine at all: a custom autograd function per block that calls F and G
# directly and checks nothing, and gives the engine's gradients (the file records
# the difference). Compiled, the bare Algorithm 1 is run three ways: F and G
# compiled one at a time, with `torch.autograd.grad` between them (what `revlib`
# does for a block whose tape records something); each backward step as one
# compiled graph, both vector-Jacobian products inside it through `torch.func.vjp`
# (so that the compiler may fuse the step's arithmetic with F and G); and the
# same with the tensors handed from block to block in channels-last layout, the one
# Inductor gives convolutions on the CPU, so that no block converts its inputs,
# forward or backward. `revlib` runs the last of these for a chain of blocks of
# plain layers like this one.


# %%
SHARE_ROWS = {
    "algorithm1/floor": "Algorithm 1, no engine / floor",
    "reversible/floor": "revlib / floor",
    "reversible/algorithm1": "revlib / Algorithm 1, no engine",
    "compiled_algorithm1/compiled_floor": "compiled: F and G one at a time / floor",
    "compiled_one_graph/compiled_floor": "compiled: one graph per step / floor",
    "compiled_one_graph_cl/compiled_floor": "compiled: the same, channels-last",
    "compiled_reversible/compiled_floor": "compiled: revlib / floor",
    "compiled_reversible/compiled_one_graph_cl": "compiled: revlib / bare version",
}
share_file = step_file.with_name("engine_share_cpu.json")
share = json.loads(share_file.read_text()) if share_file.exists() else None
if share is not None:
    paired, band = share["paired_ratio"], share["paired_ratio_95_interval"]
    show_table(
        ["paired ratio", "median", "95% interval"],
        [
            [label, f"{paired[k]:.3f}", f"{band[k][0]:.3f} to {band[k][1]:.3f}"]
            for k, label in SHARE_ROWS.items()
        ],
        caption=f"{share['device']}, run of {share['date_utc'][:10]}",
    )
    assert share["load"]["other_cores_during"] < share["load"]["max_other_cores"]
    assert share["hardware"] == bench["hardware"] and share["torch"] == bench["torch"]
    # the bare versions give the engine's gradients (in another layout: to rounding)
    differences = share["float32_gradient_difference_to_revlib"]
    assert differences["algorithm1"] == differences["compiled_one_graph_cl"] == 0
    rounded = ["compiled_algorithm1", "compiled_one_graph"]
    assert max(differences[k] for k in rounded) < 1e-3
    low = {k: band[k][0] for k in SHARE_ROWS}
    high = {k: band[k][1] for k in SHARE_ROWS}
    # eager: the algorithm and the engine each add a few percent at most
    assert 1 < low["algorithm1/floor"] and 1 < low["reversible/algorithm1"]
    assert max(high["algorithm1/floor"], high["reversible/algorithm1"]) < 1.1
    # compiled: separate graphs and contiguous halves cost a tenth or more ...
    for k in ["compiled_algorithm1", "compiled_one_graph"]:
        assert low[f"{k}/compiled_floor"] > 1.1
    # ... one graph per step, channels-last throughout, runs below the floor ...
    below = band["compiled_one_graph_cl/compiled_floor"]
    assert 0.9 < below[0] and below[1] < 1
    # ... the engine adds a few percent to it, and so sits at the floor
    engine_share = band["compiled_reversible/compiled_one_graph_cl"]
    assert 1 < engine_share[0] and engine_share[1] < 1.1
    at_floor = band["compiled_reversible/compiled_floor"]
    assert 0.95 < at_floor[0] < 1 < at_floor[1] < 1.05
    to_compiled = share["ratio_to_compiled_autograd"]
    assert to_compiled["compiled_floor"] > 4 / 3  # the floor alone, on this CPU
    assert share["depth"] == 9  # eighteen sub-functions
    for key in SHARE_ROWS:
        name = key.replace("/", "_over_")
        glue(f"share_{name}_low", low[key], display=False)
        glue(f"share_{name}_high", high[key], display=False)
    for k in ["compiled_floor", "compiled_reversible", "compiled_algorithm1"]:
        glue(f"share_{k}", to_compiled[k], display=False)

# %% [markdown]
# Eager, the distance from the floor is shared: the bare Algorithm 1 costs
# {glue:text}`share_algorithm1_over_floor_low:.3f` to
# {glue:text}`share_algorithm1_over_floor_high:.3f` times the floor, and `revlib`'s
# engine {glue:text}`share_reversible_over_algorithm1_low:.3f` to
# {glue:text}`share_reversible_over_algorithm1_high:.3f` times the bare algorithm
# (95 % intervals of per-round ratios). So the engine's tapes and checks cost a few
# percent of a step here, and running the recomputation inside the backward, block
# by block, costs a little more than one separate forward.
#
# Compiled, how the step is compiled matters more than the engine. A compiled
# autograd step is one graph for the whole chain. Algorithm 1 needs G's input
# gradient before F's backward can start, so with F and G compiled one at a time
# its backward runs the eighteen F and G of the stack as separate small graphs:
# {glue:text}`share_compiled_algorithm1_over_compiled_floor_low:.2f` to
# {glue:text}`share_compiled_algorithm1_over_compiled_floor_high:.2f` times the
# compiled floor. One graph per step is slower still while the halves are
# contiguous ({glue:text}`share_compiled_one_graph_over_compiled_floor_low:.2f` to
# {glue:text}`share_compiled_one_graph_over_compiled_floor_high:.2f`); the
# compiler lays its convolutions out channels-last on the CPU, so each step's
# contiguous inputs are converted. With the tensors kept channels-last from block
# to block, the same graph costs
# {glue:text}`share_compiled_one_graph_cl_over_compiled_floor_low:.3f` to
# {glue:text}`share_compiled_one_graph_cl_over_compiled_floor_high:.3f` times the
# floor: below it, so the floor as built here (a compiled autograd step after a
# compiled forward without a graph) is not a lower bound for a compiled step.
# `revlib` runs that structure, and its engine adds
# {glue:text}`share_compiled_reversible_over_compiled_one_graph_cl_low:.3f` to
# {glue:text}`share_compiled_reversible_over_compiled_one_graph_cl_high:.3f` times
# its bare version, which puts it at the floor
# ({glue:text}`share_compiled_reversible_over_compiled_floor_low:.3f` to
# {glue:text}`share_compiled_reversible_over_compiled_floor_high:.3f`). Against
# compiled autograd, the ratio of medians was
# {glue:text}`share_compiled_reversible:.2f` for `revlib` (the floor
# {glue:text}`share_compiled_floor:.2f`, F and G one at a time
# {glue:text}`share_compiled_algorithm1:.2f`). On this CPU one more forward alone,
# the floor, costs more than a third of a compiled step, and `revlib`'s compiled
# reversible step costs about that.
#
# (sec-memory-budget)=
# ### Between the two ends: a memory budget
#
# Storing everything and storing nothing are the two ends. Most users have memory
# for some blocks' activations, not all. `ReversibleSequence(memory_budget=...)`
# takes a number of bytes, or a fraction of what mode `"autograd"` would keep: the
# first training step measures each block (the bytes it would save, the time its
# recomputation costs) and keeps the activations of the blocks that spare the most
# time per byte while they fit; the rest run reversibly. A kept block runs exactly
# as in mode `"autograd"`, so the gradients are autograd's at every budget.

# %% tags=["nbval-ignore-output"]
budgeted = ReversibleSequence(
    [AdditiveCoupling(preact_half(8), preact_half(8)) for _ in range(6)],
    memory_budget=0.5,
)
xb = torch.randn(4, 16, 8, 8, requires_grad=True)
budgeted(xb).square().mean().backward()  # the first step measures and plans
bplan = budgeted.budget_plan
print(
    f"{bplan.stored_bytes} of {bplan.autograd_bytes} bytes kept, "
    f"{len(bplan.stored)} of 6 blocks"
)
assert bplan.stored_bytes <= bplan.autograd_bytes // 2 and len(bplan.stored) in (2, 3)
saved_by_budget = {}
for fraction in (0.0, 0.5, 1.0):
    budgeted.memory_budget = fraction
    budgeted(xb).square().mean().backward()  # plans again for the new budget
    saved_by_budget[fraction] = saved_tensor_bytes(budgeted, xb)
print({f: f"{b / 2**10:.0f} KiB" for f, b in saved_by_budget.items()})
assert saved_by_budget[0.0] < saved_by_budget[0.5] < saved_by_budget[1.0]

# %% [markdown]
# What does each byte buy? `benchmarks/budget.py` times one training step of the
# benchmark stack above and of RevNet-38 in one interleaved run, for the budget
# at fractions 0 to 1, for checkpointing in segments
# (`torch.utils.checkpoint.checkpoint_sequential`, stack only) and for
# `torch.compile` of mode `"autograd"` under its own activation memory budget
# (`torch._functorch.config.activation_memory_budget`), against the bytes each
# step saves for backward.

# %% tags=["remove-output"]
budget_runs = {}
for name in ("stack", "revnet38"):
    path = Path("..") / "benchmarks" / "results" / f"budget_{name}_cpu.json"
    budget_runs[name] = json.loads(path.read_text())


FAMILIES = ("memory budget", "checkpoint_sequential", "torch.compile, autograd")


def budget_families(run: dict) -> dict:
    """{family: [(saved MiB, median ms, label), ...]} of one benchmark run."""
    out: dict = {}
    for key, row in run["variants"].items():
        family, label = (
            ("memory budget", key.split("=")[1])
            if key.startswith("budget=")
            else ("checkpoint_sequential", key.split("/")[1])
            if key.startswith("checkpoint/")
            else ("torch.compile, autograd", key.split("@")[1])
        )
        point = (row["saved_bytes"] / 2**20, 1000 * row["median_s"], label)
        out.setdefault(family, []).append(point)
    return out


fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
colours = dict(zip(FAMILIES, ("C0", "C1", "C2"), strict=True))
for ax, (name, run) in zip(axes, budget_runs.items(), strict=True):
    for family, points in budget_families(run).items():
        mib, ms, _ = zip(*points, strict=True)
        compiled = family.startswith("torch.compile")
        ax.plot(
            mib, ms, "s" if compiled else "o-", color=colours[family], label=family
        )
        for px, py, text in [] if compiled else points:
            ax.annotate(
                text, (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7
            )
    ax.set(
        title=name, xlabel="saved for backward (MiB, log scale)", ylabel="step (ms)"
    )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([5, 10, 20, 50, 100, 200])
axes[0].legend(fontsize=8)
bench_stack = budget_runs["stack"]
fig.suptitle(f"{bench_stack['device']}")
fig.tight_layout()
glue("fig_memory_budget", fig, display=False)
plt.show()

families = budget_families(bench_stack)
bchain = sorted(families["memory budget"])
bcompiled = families["torch.compile, autograd"]
bckpt = families["checkpoint_sequential"]
for run in budget_runs.values():  # measured on an idle machine
    assert run["load"]["other_cores_during"] < run["load"]["max_other_cores"]
    assert run["hardware"]["cpu"] == bench_stack["hardware"]["cpu"]  # one machine
assert bench_stack["hardware"]["cpu_count"] == 2
assert bench is None or bench["hardware"]["cpu"] != bench_stack["hardware"]["cpu"]
glue("budget_cpu", bench_stack["hardware"]["cpu"], display=False)
assert [ms for _, ms, _ in bchain] == sorted(
    (ms for _, ms, _ in bchain), reverse=True
)
least_compiled = min(mib for mib, _, _ in bcompiled)
assert bchain[0][0] < least_compiled < min(mib for mib, _, _ in bckpt)
assert max(ms for _, ms, _ in bcompiled) < min(ms for _, ms, _ in bchain)
glue("budget_least_mib", bchain[0][0], display=False)
glue("budget_compiled_mib", least_compiled, display=False)
glue("budget_all_ms", bchain[-1][1], display=False)
glue("budget_none_ms", bchain[0][1], display=False)
glue("budget_compiled_ms", max(ms for _, ms, _ in bcompiled), display=False)
plain_step = {label: ms for _, ms, label in bckpt}
plain = plain_step["1"]  # one segment: nothing checkpointed
assert plain < bchain[-1][1]
glue("budget_plain_ms", plain, display=False)

# %% [markdown]
# ```{glue:figure} fig_memory_budget
# :name: fig-memory-budget
#
# Step time against the bytes saved for backward, from one interleaved run per
# model on an idle machine, an {glue:text}`budget_cpu` with two cores, not the
# CPU of the step-time runs above (`benchmarks/results/budget_stack_cpu.json` and
# `budget_revnet38_cpu.json`; labels: the budget fraction, the number of
# checkpointed segments, the compiler's activation memory budget).
# ```
#
# The budget does what it is for: between its ends, each block kept instead of
# reversed removes one recomputation, and the step gets faster as the bytes grow,
# from {glue:text}`budget_none_ms:.0f` ms at {glue:text}`budget_least_mib:.0f`
# MiB to {glue:text}`budget_all_ms:.0f` ms with everything kept. It is not, on that
# CPU, the fastest choice at every memory level, which is what it was built to be.
# Checkpointing in segments is faster at equal bytes: its curve lies below the
# budget's. Part of that gap is not explained yet: with every block kept, the
# budgeted chain runs each block as mode `"autograd"` does, yet its step took
# {glue:text}`budget_all_ms:.0f` ms in this run against
# {glue:text}`budget_plain_ms:.0f` ms for the plain model (one segment, nothing
# checkpointed); timed against each other on one thread, the two took the same
# time. And `torch.compile` of the plain model is faster than every other variant,
# {glue:text}`budget_compiled_ms:.0f` ms or less, while saving only
# {glue:text}`budget_compiled_mib:.0f` MiB: its partitioner already recomputes the
# cheap layers (BatchNorm, ReLU) instead of storing their outputs, so its own
# memory budget has nothing left to trade here. Below that, only the reversible
# chain goes: it is the one variant that saves less than the compiled step. The
# crossovers on a GPU, where a convolution is cheap relative to the Python around
# it and memory is the scarce resource, are for the full-run switch to measure;
# the script runs there unchanged.
#
# ## What the recomputation must replay
#
# The reversible backward runs F and G a second time, possibly long after the
# forward and in a different state of the program, and it promises autograd's
# gradients or a clear error. Dropout's masks and BatchNorm's statistics, checked
# above, are two of the things the second run must replay; random activations,
# train/eval flags, autocast, other buffers updated by the forward, parameters
# changed in place, and gradient hooks (which DDP relies on) are the others. How
# `revlib`'s tape records and checks them, with an example that has most of them
# at once and the bytes the replay keeps, is library engineering rather than part
# of the derivation: it is the subject of the appendix {ref}`app-engine`.

# %% [markdown]
# ## What we learned
#
# - Algorithm 1 follows from the chain rule applied to $z_1 = x_1 + F(x_2)$,
#   $y_2 = x_2 + G(z_1)$: two paths into $z_1$ and into $x_2$, one into $x_1$, and
#   parameter gradients from the same two vector-Jacobian products.
# - Evaluated in the right order, the step reconstructs the input and all
#   gradients with one evaluation of G and one of F.
# - The gradients equal autograd's: `gradcheck` passes in float64 (and a backward
#   that is 1% off fails it), and in float32 the relative error on a RevNet-like
#   stack is at most $10^{-5}$ whenever no ReLU decision flips in the
#   recomputation ({glue:text}`n_flip_free` of {glue:text}`n_inits`
#   initialisations here).
# - Recomputation must not update BatchNorm's running statistics a second time and
#   must replay dropout's masks; both are checked against autograd, bit for bit for
#   the buffers and the RNG state.
# - In float32 the recomputed activations differ from the stored ones by rounding.
#   Almost always that changes the gradient by rounding too: the backward
#   evaluates autograd's chain of Jacobians at rebuilt inputs, each with its own
#   rounding. But a ReLU input within rounding of zero can flip sides, and then
#   one Jacobian entry jumps between 0 and 1 and the gradient is off by far more
#   than rounding.
# - Memory: reversible is flat in depth, autograd and per-block checkpointing grow
#   linearly, checkpointing in $\sqrt{L}$ segments grows like $\sqrt{L}$ (saved
#   bytes counted exactly; the peaks are a model built from them).
# - Memory over time: replaying the three schedules step by step, autograd holds
#   at most $2N + 2$ tensors, checkpointing $N + 3$ and Algorithm 1 four, for
#   any number $N$ of blocks ({numref}`fig-alive-animation`).
# - Time: 4/3 of an ordinary step by the evaluation count (5/3 for the generic
#   inverse-then-reforward), an estimate rather than a bound, since a backward
#   costs two forwards only roughly. In the benchmark's run the reversible step
#   cost {glue:text}`bench_reversible:.2f` times an autograd step and
#   checkpointing {glue:text}`bench_checkpoint:.2f`, against
#   {glue:text}`bench_autograd_plus_forward:.2f` for autograd plus one extra
#   forward. The few percent above that are shared by the algorithm as run and the
#   engine's checks. Compiled, how the backward step is compiled decides: one
#   graph per step, with the tensors channels-last from block to block, brings
#   Algorithm 1 below its floor and `revlib` to it ({ref}`sec-engine-share`).
#
# ## Exercises
#
# 1. **Derivation.** Derive the backward step of the *affine* coupling
#    $y_1 = x_1$, $y_2 = x_2 \odot e^{s(x_1)} + t(x_1)$: reconstruct $x$, then
#    give $\bar x_1$, $\bar x_2$ and the parameter gradients in the style of
#    {eq}`eq-alg1-dz1`--{eq}`eq-alg1-dW`. How many evaluations of the
#    scale-and-shift network does it need? (Hint: write $x_2 \odot e^{s}$ in
#    terms of quantities the backward step has.)
# 2. **Code change.** Modify `algorithm1_step` so that it evaluates F *before*
#    G. Which equation can no longer be evaluated, and what would you have to
#    store to make it work?
# 3. **Experiment.** Predict the count of ReLU inputs "at risk" in the ReLU-kink
#    cell before looking at it. If the forward's ReLU inputs have a density
#    $p(0)$ at zero and the recomputation moves none of them by more than
#    $\delta$, about $2\delta\,p(0)\,N$ of the $N$ inputs lie within $\delta$ of
#    zero. Estimate $p(0)$ from the forward's ReLU inputs (the fraction within
#    $0.01$ of zero, divided by $0.02$), take $\delta$ from the cell, and compare
#    the prediction with the count. Why do fewer inputs flip than are at risk?
#    Then replace `nn.ReLU` by `nn.Softplus(beta=20)` in the same network and
#    compare the largest gradient error with ReLU's.
# 4. **Experiment.** In the segment-checkpointing cell, try $k = 1, 2, 4, 8, 16$
#    at $L = 64$ and plot the peak against $k$. Where is the minimum, and how
#    does it compare with $\sqrt{L A / a}$?
# 5. **Derivation.** Recursive checkpointing keeps the input of the chain,
#    recomputes to its middle, keeps that, and recurses on each half. Show that
#    it keeps $O(\log L)$ tensors and costs $O(L \log L)$ evaluations.
#
# ## Solutions
#
# Each solution is folded; open it after trying the exercise. Where a solution
# has a number, the folded code cell above it computes and checks it.

# %% tags=["hide-cell"]
torch.manual_seed(0)
st_net = nn.Sequential(
    nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 6)
).double()  # outputs (s, t)
xa = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
xa1, xa2 = xa.chunk(2, dim=1)
s_, t_ = st_net(xa1).chunk(2, dim=1)
ya = torch.cat([xa1, xa2 * s_.exp() + t_], 1)
dya = torch.randn_like(ya)
ya.backward(dya)

ya1, ya2 = ya.detach().chunk(2, dim=1)
dya1, dya2 = dya.chunk(2, dim=1)
x1r = ya1.clone().requires_grad_(True)
s_r, t_r = st_net(x1r).chunk(2, dim=1)  # the one evaluation
x2r = (ya2 - t_r.detach()) * (-s_r.detach()).exp()  # reconstruction
ds_out, dt_out = dya2 * (ya2 - t_r.detach()), dya2  # gradients w.r.t. s and t
dx1_vjp, *dW = torch.autograd.grad(
    [s_r, t_r], [x1r, *st_net.parameters()], [ds_out, dt_out]
)
dx1r, dx2r = dya1 + dx1_vjp, dya2 * s_r.detach().exp()
affine_err = max(
    (x2r - xa2).abs().max().item(),
    (torch.cat([dx1r, dx2r], 1) - xa.grad).abs().max().item(),
    max(
        (a - p.grad).abs().max().item()
        for a, p in zip(dW, st_net.parameters(), strict=True)
    ),
)
print(
    "affine coupling, derived backward step vs autograd (float64): "
    f"equal to rounding (< 1e-12): {affine_err < 1e-12}"
)
assert affine_err < 1e-12

# %% [markdown]
# ```{admonition} Solution 1 (the affine coupling's backward step)
# :class: dropdown
#
# **Reconstruct.** $y_1 = x_1$ gives $x_1 = y_1$; evaluate $s = s(x_1)$ and
# $t = t(x_1)$ once and set $x_2 = (y_2 - t) \odot e^{-s}$.
#
# **Gradients.** $x_2$ enters only $y_2$, elementwise with factor $e^{s}$:
# $\bar x_2 = \bar y_2 \odot e^{s}$. $x_1$ enters $y_1$ with the identity and
# $y_2$ through $s$ and $t$. Since $\partial y_2 / \partial s = x_2 \odot e^{s} = y_2 - t$
# and $\partial y_2/\partial t = 1$,
#
# $$
# \bar x_1 = \bar y_1 + \Big(\frac{\partial s}{\partial x_1}\Big)^{\!\top}\big(\bar y_2 \odot (y_2 - t)\big)
#   + \Big(\frac{\partial t}{\partial x_1}\Big)^{\!\top} \bar y_2, \qquad
# \bar W = \Big(\frac{\partial s}{\partial W}\Big)^{\!\top}\big(\bar y_2 \odot (y_2 - t)\big)
#   + \Big(\frac{\partial t}{\partial W}\Big)^{\!\top} \bar y_2 .
# $$
#
# Both are one vector-Jacobian product through the scale-and-shift network with
# the pair of output gradients $(\bar y_2 \odot (y_2 - t), \bar y_2)$, so the step
# needs **one** evaluation of it (which also gave $x_2$), and one backward pass.
# The folded cell implements these formulas and compares them with autograd in
# float64: they agree to rounding.
# ```
#
# ```{admonition} Solution 2 (evaluating F before G)
# :class: dropdown
#
# F's argument is $x_2$, and $x_2 = y_2 - G(z_1)$ is only known after G has been
# evaluated, so {eq}`eq-alg1-reconstruct` cannot start with F: $x_2$, and with it
# $F(x_2)$ and $x_1 = z_1 - F(x_2)$, cannot be computed. Also {eq}`eq-alg1-dx2`
# needs $\bar z_1$, which needs G's vector-Jacobian product {eq}`eq-alg1-dz1`.
# To evaluate F first you would have to store $x_2$ (or $G(z_1)$) in the forward:
# half of every block's input, which is half the memory the reversible backward
# was meant to save. The order G then F is forced by the order F then G of the
# forward.
# ```


# %% tags=["hide-cell", "nbval-ignore-output"]
def relu_to_softplus(model: nn.Module) -> nn.Module:
    """The same model with every ReLU replaced by Softplus(beta=20)."""
    for name, child in model.named_children():
        if isinstance(child, nn.ReLU):
            setattr(model, name, nn.Softplus(beta=20))
        else:
            relu_to_softplus(child)
    return model


ref_large = large["autograd"]
forward_inputs = torch.cat([a.flatten() for a in ref_large.relu_inputs.values()])
density_at_zero = (forward_inputs.abs() < 0.01).float().mean().item() / 0.02
predicted_at_risk = 2 * shift * density_at_zero * n_relu
softplus_net = relu_to_softplus(copy.deepcopy(base_large))
softplus_error = rel_error(
    run_mode(softplus_net, x_large, "reversible"),
    run_mode(softplus_net, x_large, "autograd"),
)
print(
    f"density of the forward's ReLU inputs at zero: p(0) = {density_at_zero:.2f}; "
    f"largest change delta = {shift:.1e}"
)
print(
    f"at risk: predicted 2 delta p(0) N = {predicted_at_risk:.1f}, "
    f"counted {at_risk}; "
    f"flipped: {flips}"
)
print(
    f"largest relative gradient error: ReLU {large_error:.1e}, "
    f"Softplus(beta=20) {softplus_error:.1e}"
)
# the count is a Poisson-like draw around the prediction
assert abs(at_risk - predicted_at_risk) <= 3 * predicted_at_risk**0.5 + 3
assert flips <= at_risk  # a flip needs |input| <= its own change <= delta
assert softplus_error < 1e-4  # no kink: rounding-level error
glue("density_at_zero", density_at_zero, display=False)
glue("predicted_at_risk", predicted_at_risk, display=False)
glue("softplus_error", softplus_error, display=False)

# %% [markdown]
# ```{admonition} Solution 3 (predicting the inputs at risk)
# :class: dropdown
#
# The forward's ReLU inputs are BatchNorm outputs, close to a unit normal near
# zero: the folded cell finds $p(0) \approx$ {glue:text}`density_at_zero:.2f`
# (a standard normal has $1/\sqrt{2\pi} \approx 0.40$). With the cell's $\delta$
# and $N$ = {glue:text}`large_n_relu:,` inputs, $2\delta\,p(0)\,N$ predicts
# {glue:text}`predicted_at_risk:.1f` inputs at risk; the cell counted
# {glue:text}`large_at_risk`. A count of rare events scatters around its mean by
# about its square root, and the cell asserts agreement within three square
# roots (plus three, for small counts).
# The model says the number at risk grows in proportion to $N$ and to $\delta$,
# so the chance that a step has *no* flip falls off exponentially with the
# size of the batch and of the images.
#
# Fewer inputs flip ({glue:text}`large_flips` here) than are at risk because
# $\delta$ is the *largest* change over all $N$ inputs. An input at distance $d$
# from zero flips only if its own change is larger than $d$ and points towards
# zero, and most inputs move by much less than the largest change; a flip is
# possible only for an input within $\delta$ of zero, so the count at risk bounds
# the flips from above.
#
# Softplus with $\beta = 20$ has no kink: its derivative changes by at most
# $\beta\delta/4$ when its input moves by $\delta$, so every Jacobian moves by
# rounding and the largest relative gradient error in the same network is
# {glue:text}`softplus_error:.1e`, against ReLU's
# {glue:text}`large_error:.1e`.
# ```

# %% tags=["hide-cell"]
L_seg = 64
seg_sizes = [1, 2, 4, 8, 16]
modelled = {}
for k in seg_sizes:
    torch.manual_seed(0)
    kept_k = saved_tensor_bytes(
        SegmentCheckpointed(list(revnet_stack(L_seg, channels=32).blocks), k), x
    )
    segment_k = revnet_stack(k, channels=32)
    segment_k.mode = "autograd"
    one_segment = saved_tensor_bytes(
        segment_k, x
    )  # a segment's internals, recomputed with autograd
    modelled[k] = (kept_k + one_segment) / activation_bytes
a_over_A = per_block / activation_bytes
k_star = (L_seg / a_over_A) ** 0.5
fig, ax = plt.subplots(figsize=(4.5, 3))
ax.plot(seg_sizes, list(modelled.values()), "o-")
ax.axvline(k_star, color="gray", ls="--", label=f"sqrt(L A / a) = {k_star:.1f}")
ax.set_xscale("log", base=2)
ax.set_xlabel("segment size k (L = 64)")
ax.set_ylabel("modelled peak / A")
ax.legend()
fig.tight_layout()
plt.show()
best_k = min(modelled, key=modelled.get)
print(
    "modelled peak in A:",
    ", ".join(f"k={k}: {v:.1f}" for k, v in modelled.items()),
    f"; minimum at k = {best_k}; sqrt(L A / a) = {k_star:.2f}",
)
assert all(
    abs(modelled[k] - (L_seg // k + a_over_A * k)) < 2 for k in seg_sizes
)  # the L/k A + k a model
assert abs(best_k - k_star) <= k_star / 2
glue("seg_best_k", best_k, display=False)
glue("seg_k_star", k_star, display=False)
glue("seg_a_over_A", a_over_A, display=False)

# %% [markdown]
# ```{admonition} Solution 4 (the best segment size)
# :class: dropdown
#
# The folded cell measures, for each $k$, the bytes kept by the segmented chain
# (one input per segment) plus one segment's autograd internals. The sum follows
# $L/k \cdot A + k \cdot a$ with $a/A = $ {glue:text}`seg_a_over_A:.2f` (one
# block's saved bytes in activation tensors), up to the constant that autograd
# keeps at the segment's ends. Among $k = 1, 2, 4, 8, 16$ the minimum is at
# $k = $ {glue:text}`seg_best_k`, next to $\sqrt{L A / a} = $
# {glue:text}`seg_k_star:.1f`, where the derivative $-L A/k^2 + a$ vanishes.
# Segments of $\sqrt{L}$ blocks ($k = 8$), the usual rule, ignore the ratio
# $a/A$; with several tensors saved per block the best segments are shorter.
# ```


# %% tags=["hide-cell"]
def recursive_schedule(n: int, stored: int = 1) -> tuple[int, int]:
    """Block evaluations and the largest number of stored block inputs for the
    backward of a segment of n blocks whose input is stored (`stored` inputs are
    already kept above it)."""
    if n == 1:
        return 1, stored  # re-run the block with autograd, then backprop through it
    half = n // 2
    evals_second, peak_second = recursive_schedule(
        n - half, stored + 1
    )  # after n/2 evaluations to reach the middle
    evals_first, peak_first = recursive_schedule(
        half, stored
    )  # the middle is freed again
    return half + evals_second + evals_first, max(peak_second, peak_first)


for m in range(1, 11):
    L_rec = 2**m
    evals, peak_inputs = recursive_schedule(L_rec)
    assert evals == L_rec // 2 * m + L_rec and peak_inputs == m + 1
print(
    f"L = {L_rec}: {evals} evaluations in the backward "
    f"(L/2 log2 L + L = {L_rec // 2 * m + L_rec}), "
    f"at most {peak_inputs} stored inputs (log2 L + 1)"
)

# %% [markdown]
# ```{admonition} Solution 5 (recursive checkpointing)
# :class: dropdown
#
# Let the backward of a segment of $n$ blocks, whose input is stored, keep
# $S(n)$ inputs at most and cost $E(n)$ evaluations. It runs $n/2$ blocks forward
# from the input to the middle and keeps the middle (one more tensor), does the
# second half recursively, frees the middle, and does the first half
# recursively from the input:
#
# $$
# S(n) = 1 + S(n/2), \quad S(1) = 1; \qquad E(n) = \tfrac{n}{2} + 2E(n/2), \quad E(1) = 1 .
# $$
#
# Unrolled over $\log_2 n$ levels, $S(n) = \log_2 n + 1 = O(\log L)$ tensors, and
# each level costs $n/2$ evaluations in all, so
# $E(n) = \tfrac{n}{2}\log_2 n + n = O(L \log L)$, on top of the forward's $L$.
# The folded cell runs the schedule for $L = 2, 4, \dots, 1024$ and checks both
# closed forms.
# ```
