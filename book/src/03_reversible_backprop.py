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
# included), and measure what it costs in memory and in time.

# %%
import copy
import inspect
import statistics
import time
from fractions import Fraction
from types import SimpleNamespace

import matplotlib.pyplot as plt
import torch
from revlib.harness.notebook import glue
from torch import nn
from torch.utils.checkpoint import checkpoint

import revlib
from revlib import AdditiveCoupling, ReversibleSequence
from revlib.core.blocks import ReversibleBlock
from revlib.core.memory import MiB, saved_tensor_bytes
from revlib.core.recompute import checkpoint_updating_stats_once
from revlib.harness.figures import draw_reversible_backward, show_table

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
# ({numref}`fig-reversible-backward`).
#
# Substituting {eq}`eq-alg1-dz1` into {eq}`eq-alg1-dx2` gives, in one line,
# $\bar x_2 = \bar y_2 + (\partial F/\partial x_2)^\top \bar y_1
# + (\partial F/\partial x_2)^\top (\partial G/\partial z_1)^\top \bar y_2$: the
# transposed Jacobian of G is applied *before* that of F, the reverse of the order
# in which the forward applies them. A widely read blog-post review of Gomez et
# al. {cite:p}`royer2019revnetnotes` writes this product (in row-vector
# notation) as $\bar y_{n,2}(1 + \frac{\partial F}{\partial y_{n,2}}
# \frac{\partial G}{\partial y_{n,1}})$ in its Table 1: the factors are in the
# wrong order (row-vector notation needs
# $\frac{\partial G}{\partial y_{n,1}}\frac{\partial F}{\partial y_{n-1,2}}$),
# and F's Jacobian is taken at $y_{n,2}$ where F's argument is the block's input
# half $y_{n-1,2}$. Its gradient of $\theta_F$ has the same order slip. The
# derivation above, and the float64 check below, are the reference.

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
# ## The equations, as code
#
# Here is one step written directly from the equations, for one block whose F and
# G are small convolutional networks, checked in float64 against ordinary
# autograd on the same block.

# %% tags=["nbval-ignore-output"]
def algorithm1_step(F: nn.Module, G: nn.Module, y: torch.Tensor, dy: torch.Tensor):
    """One backward step of a RevNet block: returns x, dx and the gradients of F's and G's parameters."""
    y1, y2 = y.chunk(2, dim=1)
    dy1, dy2 = dy.chunk(2, dim=1)
    z1 = y1.detach().requires_grad_(True)
    g = G(z1)                                   # the one evaluation of G
    x2 = (y2 - g).detach().requires_grad_(True)  # x2 = y2 - G(z1)
    dz1_from_g, *dW_G = torch.autograd.grad(g, [z1, *G.parameters()], dy2)
    dz1 = dy1 + dz1_from_g                      # dz1 = dy1 + (dG/dz1)^T dy2
    f = F(x2)                                   # the one evaluation of F
    x1 = z1.detach() - f.detach()               # x1 = z1 - F(x2)
    dx2_from_f, *dW_F = torch.autograd.grad(f, [x2, *F.parameters()], dz1)
    dx2 = dy2 + dx2_from_f                      # dx2 = dy2 + (dF/dx2)^T dz1
    dx1 = dz1                                   # dx1 = dz1
    return torch.cat([x1, x2.detach()], 1), torch.cat([dx1, dx2], 1), dW_F, dW_G


def small_net(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.Tanh(), nn.Conv2d(channels, channels, 3, padding=1))


block = AdditiveCoupling(small_net(3), small_net(3)).double()
x = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
y = block(x)
dy = torch.randn_like(y)
y.backward(dy)  # ordinary autograd, for reference

x_rec, dx, dW_F, dW_G = algorithm1_step(block.F, block.G, y.detach(), dy)
step_errors = {
    "x (reconstructed)": (x_rec - x).abs().max().item(),
    "dx": (dx - x.grad).abs().max().item(),
    "dW_F": max((a - p.grad).abs().max().item() for a, p in zip(dW_F, block.F.parameters())),
    "dW_G": max((a - p.grad).abs().max().item() for a, p in zip(dW_G, block.G.parameters())),
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
# splits `x` again at once, so `x` travels as `Halves`, with $x_1$ written
# straight into the first half of a full-size buffer (where a concatenation would
# have put it: BatchNorm's reduction order depends on the strides it reads, so the
# layout is kept to keep the gradients' bits), and the gradient's second half is
# added straight into its place.

# %% tags=["nbval-ignore-output"]
print(inspect.getsource(AdditiveCoupling.backward_step))

# %% [markdown]
# The chain is a `torch.autograd.Function`. Its forward runs every block under
# `torch.no_grad()` (no graph, so nothing is saved) and keeps only the output `y`.
# Its backward walks the blocks from last to first, passing each block's
# reconstructed input and input gradient to the block before it, and adds up each
# parameter's gradient. (The parameters are inputs of the function, so their
# gradients reach `.grad` through the autograd engine as usual.)

# %% tags=["nbval-ignore-output"]
print(inspect.getsource(revlib.core.sequence._ReversibleChain.backward))

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


chain = ReversibleSequence([AdditiveCoupling(tiny_net(2), tiny_net(2)) for _ in range(3)]).double()
x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
params = list(chain.parameters())
# gradcheck perturbs its inputs in place, so passing the parameters themselves checks their gradients too
passed = torch.autograd.gradcheck(lambda x, *ps: chain(x), (x, *params), fast_mode=True)


class WrongGradients(AdditiveCoupling):
    """A deliberately broken backward step: parameter gradients 1% too large."""

    def backward_step(self, y, dy, tape):
        x, dx, grads = super().backward_step(y, dy, tape)
        return x, dx, [(p, None if g is None else 1.01 * g) for p, g in grads]


broken = ReversibleSequence([WrongGradients(tiny_net(2), tiny_net(2))]).double()  # one block: a failing check is slow
broken_passed = torch.autograd.gradcheck(
    lambda x, *ps: broken(x), (x, *broken.parameters()), fast_mode=True, raise_exception=False
)
print(f"gradcheck, input and {len(params)} parameter tensors, mode 'reversible': {passed}")
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
# for two random initialisations. The helper also remembers the input of every
# ReLU in its last call (for the reversible mode, the recomputation in the
# backward), and counts the ReLU inputs whose sign differs from the forward's in
# mode `"autograd"`; the next section explains why.

# %% tags=["nbval-ignore-output"]
def preact_half(channels: int, dropout: float = 0.0) -> nn.Sequential:
    """F or G of a RevNet basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 (optionally dropout)."""
    layers = [
        nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
    ]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def revnet_stack(depth: int, channels: int, dropout: float = 0.0) -> ReversibleSequence:
    half = channels // 2
    return ReversibleSequence(
        [AdditiveCoupling(preact_half(half, dropout), preact_half(half, dropout)) for _ in range(depth)]
    )


def run_mode(base: ReversibleSequence, x: torch.Tensor, mode: str, seed: int = 0, **options) -> SimpleNamespace:
    """A copy of `base` in `mode`, one forward and backward of mean(y^2) under a fixed seed.

    Returns the model, its gradients (input and parameters), the global RNG state after
    the step, and each ReLU's input in its last call.
    """
    model = copy.deepcopy(base)
    model.mode = mode
    for name, value in options.items():
        setattr(model, name, value)
    relu_inputs = {}

    def remember(name):
        return lambda module, args, out: relu_inputs.__setitem__(name, args[0].detach().clone())

    handles = [m.register_forward_hook(remember(n)) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    torch.manual_seed(seed)
    xg = x.clone().requires_grad_(True)
    model(xg).square().mean().backward()
    for h in handles:
        h.remove()
    grads = {"input": xg.grad, **{n: p.grad for n, p in model.named_parameters()}}
    return SimpleNamespace(model=model, grads=grads, rng=torch.get_rng_state(), relu_inputs=relu_inputs)


def rel_error(run: SimpleNamespace, ref: SimpleNamespace) -> float:
    """Largest relative error, over the input gradient and every parameter gradient."""
    return max(((run.grads[k] - g).norm() / g.norm()).item() for k, g in ref.grads.items())


def relu_flips(run: SimpleNamespace, ref: SimpleNamespace) -> int:
    """ReLU inputs that are positive in one run and not in the other."""
    return sum(int(((run.relu_inputs[k] > 0) != (a > 0)).sum()) for k, a in ref.relu_inputs.items())


x = torch.randn(8, 32, 8, 8)
checks = []
for seed in range(2):
    torch.manual_seed(seed)
    base = revnet_stack(depth=8, channels=32)
    runs = {mode: run_mode(base, x, mode) for mode in revlib.MODES}
    if seed == 0:
        models = {mode: run.model for mode, run in runs.items()}  # for the BatchNorm check below
    checks.append({
        "seed": seed,
        "reversible": rel_error(runs["reversible"], runs["autograd"]),
        "checkpoint": rel_error(runs["checkpoint"], runs["autograd"]),
        "flips": relu_flips(runs["reversible"], runs["autograd"]),
    })
n_tensors = len(runs["autograd"].grads)
for c in checks:
    print(
        f"init {c['seed']}: largest relative error over {n_tensors} gradient tensors: reversible {c['reversible']:.1e}, "
        f"checkpoint {c['checkpoint']:.1e}; ReLU decisions that differ in the recomputation: {c['flips']}"
    )
flip_free = [c for c in checks if c["flips"] == 0]
assert flip_free, "every initialisation had a ReLU flip (see the next section)"
assert all(c["reversible"] <= 1e-5 for c in flip_free)
assert all(c["checkpoint"] <= 1e-5 for c in checks)
glue("rev_grad_rel_error", max(c["reversible"] for c in flip_free), display=False)
glue("n_flip_free", len(flip_free), display=False)

# %% [markdown]
# In the {glue:text}`n_flip_free` of 2 initialisations where no ReLU decision
# changed (the usual case at this size), the reversible gradients differ from
# autograd's by at most {glue:text}`rev_grad_rel_error:.1e` in relative terms (the
# cell asserts at most $10^{-5}$): float32 rounding, coming from the reconstructed
# activations, which differ from the stored ones in the last bits ({ref}`ch-coupling`).
# Checkpointing recomputes from stored inputs, so its gradients are those of
# autograd.
#
# (sec-relu-kink)=
# ### Where float32 reconstruction shows: ReLU's kink
#
# A reconstructed activation differs from the forward's by a few units in the last
# place. Almost always that changes the gradient by the same few units. But a ReLU
# input that was within that distance of zero in the forward can land on the other
# side of zero in the recomputation, and there the gradient of a ReLU network jumps:
# that element's gradient is passed through in one run and blocked in the other.
# The reversible backward then computes the exact gradient of the network, but at
# a nearby point, the reconstructed activations, rather than at the forward's; one
# flip changes the gradient by far more than rounding. The more ReLU inputs there are, the likelier a flip; here is
# one larger batch (32 images of 16 x 16, the same 8 blocks):

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
base_large = revnet_stack(depth=8, channels=32)
x_large = torch.randn(32, 32, 16, 16)
large = {mode: run_mode(base_large, x_large, mode) for mode in ["autograd", "reversible"]}
ref, rev = large["autograd"], large["reversible"]
shift = max((rev.relu_inputs[k] - a).abs().max().item() for k, a in ref.relu_inputs.items())
at_risk = sum(int((a.abs() <= shift).sum()) for a in ref.relu_inputs.values())
n_relu = sum(a.numel() for a in ref.relu_inputs.values())
flips = relu_flips(rev, ref)
large_error = rel_error(rev, ref)
print(f"ReLU inputs in one step: {n_relu:,d}; largest change in the recomputation: {shift:.1e}")
print(f"inputs within that distance of zero: {at_risk}; decisions that flipped: {flips}")
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
print(f"batches counted by BatchNorm after one step through plain torch.utils.checkpoint: {plain_checkpoint_batches}")
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
    same = all(torch.equal(buffers[mode][k], buffers["autograd"][k]) for k in buffers["autograd"])
    counters = {b.item() for k, b in buffers[mode].items() if k.endswith("num_batches_tracked")}
    print(f"mode {mode!r}: {len(buffers[mode])} buffers identical to 'autograd': {same}; batches counted: {counters}")
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
drop["no replay"] = run_mode(base_dropout, x, "reversible", seed=1, preserve_rng_state=False)

dropout_errors = {}
for name in ["reversible", "checkpoint", "no replay"]:
    dropout_errors[name] = rel_error(drop[name], drop["autograd"])
    same_rng = torch.equal(drop[name].rng, drop["autograd"].rng)
    flipped = relu_flips(drop[name], drop["autograd"])
    print(
        f"{name!r:12s}: largest relative gradient error {dropout_errors[name]:.1e}; "
        f"RNG state after the step as autograd's: {same_rng}; ReLU decisions that differ: {flipped}"
    )
    if name != "no replay":
        assert same_rng
        assert dropout_errors[name] <= 1e-5 or flipped > 0  # only a ReLU flip (see above) may exceed rounding
assert dropout_errors["no replay"] > 0.1  # new masks in the recomputation: wrong gradients
glue("dropout_rev_error", dropout_errors["reversible"], display=False)
glue("dropout_no_replay_error", dropout_errors["no replay"], display=False)

# %% [markdown]
# With the masks replayed the gradients agree to {glue:text}`dropout_rev_error:.1e`
# and the global RNG state after the step is the one ordinary autograd leaves;
# without the replay the gradient error is {glue:text}`dropout_no_replay_error:.1f`
# (relative), which is to say the gradients are simply wrong.
#
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
    mode: [(memory[mode][b] - memory[mode][a]) // (b - a) for a, b in zip(depths, depths[1:])]
    for mode in revlib.MODES
}
assert len(set(memory["reversible"].values())) == 1 and memory["reversible"][2] == activation_bytes
assert len(set(slope["autograd"])) == 1 and slope["autograd"][0] > 0  # exactly linear
assert all(memory["checkpoint"][d] == d * activation_bytes for d in depths)  # one block input per block
glue("mem_rev_bytes", memory["reversible"][64], display=False)
glue("mem_autograd_2", memory["autograd"][2], display=False)
glue("mem_autograd_64", memory["autograd"][64], display=False)
glue("mem_checkpoint_64", memory["checkpoint"][64], display=False)
glue("mem_autograd_per_block_A", slope["autograd"][0] / activation_bytes, display=False)

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
# none for autograd), from the measurements above.

# %% tags=["nbval-ignore-output"]
class SegmentCheckpointed(nn.Module):
    """A chain of blocks checkpointed in segments of `size` blocks: only each segment's input is kept."""

    def __init__(self, blocks: list[nn.Module], size: int) -> None:
        super().__init__()
        self.segments = nn.ModuleList(nn.Sequential(*blocks[i:i + size]) for i in range(0, len(blocks), size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for segment in self.segments:
            x = checkpoint_updating_stats_once(segment, segment, x)
        return x


per_block = slope["autograd"][0]  # one block's autograd bytes, a
square_depths = [4, 16, 64]
peak = {name: {} for name in ["autograd", "checkpoint every block", "checkpoint sqrt(L) segments", "reversible"]}
for depth in square_depths:
    size = int(depth ** 0.5)
    segmented = SegmentCheckpointed(list(revnet_stack(depth, channels=32).blocks), size)
    kept = saved_tensor_bytes(segmented, x)
    assert kept == depth // size * activation_bytes  # one input per segment
    peak["autograd"][depth] = memory["autograd"][depth]
    peak["checkpoint every block"][depth] = memory["checkpoint"][depth] + per_block
    peak["checkpoint sqrt(L) segments"][depth] = kept + memory["autograd"][size]
    peak["reversible"][depth] = memory["reversible"][depth] + per_block
show_table(
    ["scheme", *[f"L = {d}" for d in square_depths], "growth"],
    [[name, *[f"{v[d] / activation_bytes:.1f} A" for d in square_depths], growth]
     for (name, v), growth in zip(peak.items(), ["O(L)", "O(L)", "O(sqrt L)", "O(1)"])],
    caption="Bytes kept after the forward plus the largest recomputation, in activation tensors A",
)
growth_16_to_64 = {name: v[64] / v[16] for name, v in peak.items()}
assert 3.5 < growth_16_to_64["autograd"] < 4.5 and 3 < growth_16_to_64["checkpoint every block"] < 4.5
assert 1.5 < growth_16_to_64["checkpoint sqrt(L) segments"] < 2.5  # four times deeper, about twice the memory
assert growth_16_to_64["reversible"] == 1
glue("sqrt_growth", growth_16_to_64["checkpoint sqrt(L) segments"], display=False)
glue("autograd_growth", growth_16_to_64["autograd"], display=False)

# %% [markdown]
# From 16 to 64 blocks, four times deeper, the memory of autograd grows
# {glue:text}`autograd_growth:.2f` times, that of $\sqrt{L}$-segment checkpointing
# {glue:text}`sqrt_growth:.2f` times, and that of the reversible backward not at
# all. {cite:t}`gomez2017revnet` summarise the options in their Table 1, which we
# reproduce (the $O(\log L)$ row, recursive checkpointing
# {cite:p}`chen2016checkpoint,griewank2000revolve`, is not implemented here):
#
# | technique | activation memory | compute |
# |---|---|---|
# | naive backprop | $O(L)$ | $O(L)$ |
# | checkpointing in segments | $O(\sqrt{L})$ | $O(L)$ |
# | recursive checkpointing | $O(\log L)$ | $O(L \log L)$ |
# | reversible blocks | $O(1)$ | $O(L)$ |
#
# The reversible backward gets $O(1)$ for the compute of checkpointing, but only
# for blocks that are invertible; the others must store their inputs, and
# checkpointing applies to any block.
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
# $1 + 1 + 2 = 4$ units, $4/3$ of ordinary training: this is a lower bound for any
# method that stores no activations inside the block, since the backward cannot
# avoid one evaluation to recover what was not stored. Checkpointing each block
# has the same count. A generic reversible backward that first inverts the block
# (one evaluation of F and G) and then runs it forward again with autograd (a
# second one) costs $1 + 2 + 2 = 5$ units, or $5/3$.
#
# The evaluations are easy to count: a forward pre-hook on every F and G counts
# how often each is called in one training step. `GenericAdditive` below is the
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

    def count(module, args):
        nonlocal calls
        calls += 1

    handles = [fn.register_forward_pre_hook(count) for b in model.blocks for fn in (b.F, b.G)]
    model(x.clone().requires_grad_(True)).square().mean().backward()
    for h in handles:
        h.remove()
    return calls / (2 * len(model.blocks))


cost_model = {
    # evaluations of F and G per step (counted), plus 2 units for the backward pass
    name: evaluations_per_step(model, x) for name, model in variants_of(revnet_stack(4, channels=32)).items()
}
rows, theory = [], {}
for name, evals in cost_model.items():
    units = Fraction(evals) + 2
    theory[name] = units / 3
    rows.append([name, f"{evals:g}", str(units), str(theory[name])])
show_table(["backward", "evaluations of F and G per step (counted)", "units (evaluations + 2 for backprop)",
            "cost / autograd"], rows)
assert theory["autograd"] == 1
assert theory["reversible"] == Fraction(4, 3) and theory["checkpoint"] == Fraction(4, 3)
assert theory["reversible, generic step"] == Fraction(5, 3)

# %% [markdown]
# The counted evaluations match the derivation: 1 for autograd, 2 for the fused
# reversible step and for checkpointing, 3 for the generic step, hence the ratios
# 1, 4/3, 4/3 and 5/3. These count only F and G; the additions, the
# concatenations and the bookkeeping of the reversible backward come on top, and
# the ratio between a layer's backward and its forward is "about 2", not exactly 2,
# so measured times are only near these numbers.
#
# ### Measured
#
# We time one training step (forward, backward, SGD update) of 8 blocks for each
# variant, after a warm-up, in rounds of one step per variant, so that a change in
# the machine's load affects all of them alike; each variant's ratio to autograd is
# the median over rounds of the ratio within a round. These are CPU timings on one
# thread on whatever machine executed this notebook, with a small batch; they are
# noisy, and the ratios on a GPU, where the work is spread differently, need not be
# the same (`benchmarks/step_time.py` measures any device).

# %% tags=["nbval-ignore-output"]
def time_steps(models: dict[str, nn.Module], x: torch.Tensor, repeats: int = 9) -> dict[str, list[float]]:
    """Seconds per training step of each model: warm-up, then `repeats` rounds, one step of each model per round."""
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.01) for name, m in models.items()}

    def step(name: str) -> None:
        optimizers[name].zero_grad(set_to_none=True)
        models[name](x).square().mean().backward()
        optimizers[name].step()

    for name in models:  # warm-up
        step(name)
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name in models:
            start = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - start)
    return times


threads = torch.get_num_threads()
torch.set_num_threads(1)  # one thread: the ratio then reflects the work done, not how small ops parallelise
try:
    times = time_steps(variants_of(revnet_stack(8, channels=32)), torch.randn(32, 32, 16, 16))
finally:
    torch.set_num_threads(threads)
medians = {name: statistics.median(t) for name, t in times.items()}
# ratio within each round (steps run back to back), then the median over rounds
ratios = {name: statistics.median(a / b for a, b in zip(t, times["autograd"])) for name, t in times.items()}
print(f"CPU, 1 thread, torch {torch.__version__}; 8 blocks, 32 channels, batch 32, 16 x 16; {len(times['autograd'])} rounds")
for name in medians:
    print(
        f"{name:26s} median step {1000 * medians[name]:7.1f} ms   ratio to autograd {ratios[name]:.2f}"
        f"   (evaluation count: {float(theory[name]):.2f})"
    )
assert ratios["reversible"] > 1.0  # recomputation is never free
glue("time_ratio_rev", ratios["reversible"], display=False)
glue("time_ratio_ckpt", ratios["checkpoint"], display=False)
glue("time_ratio_generic", ratios["reversible, generic step"], display=False)

# %% [markdown]
# On the CPU that ran this notebook, a reversible training step took
# {glue:text}`time_ratio_rev:.2f` times as long as an ordinary one, checkpointing
# {glue:text}`time_ratio_ckpt:.2f` times, and the generic inverse-then-reforward
# step {glue:text}`time_ratio_generic:.2f` times (4/3, 4/3 and 5/3 by the count
# above). {cite:t}`gomez2017revnet` make the same count: about $4N$ operations
# for a reversible step against $3N$ for backprop, 33% more, the same overhead as
# checkpointing; they add that where a forward and a backward cost about the same,
# as they found on GPUs, the overhead is closer to 50%. MemCNN's README
# {cite:p}`leemput2019memcnn` lists CIFAR-10 training times that make its
# RevNets 1.2 to 1.5 times slower than the matching ResNets (our arithmetic on
# its quoted times; not measured here).
#
# ## What the recomputation must replay
#
# The reversible backward runs F and G a second time, possibly long after the
# forward and in a different state of the program. Its promise is autograd's
# gradients or a clear error, never a silently wrong gradient. That holds only if
# the second run computes the very function the first one computed, so `revlib`'s
# tape records, per call of a sub-function, what that run depended on besides its
# input, and the chain checks the rest before it starts:
#
# - **Random numbers.** Not only `nn.Dropout`: RReLU, attention dropout, a call of
#   `torch.nn.functional.dropout` or `torch.rand_like`. The tape captures the
#   generator states (CPU and the input's accelerator) before every call and keeps
#   them only if the call moved them, so any draw is replayed and a deterministic
#   call keeps nothing. `preserve_rng_state=False` opts out, as in
#   `torch.utils.checkpoint`.
# - **Train/eval flags.** `model.eval()` between forward and backward (an
#   evaluation inside the training step) would recompute BatchNorm with its running
#   statistics; the backward runs every submodule in the mode it had in the forward.
# - **Autocast,** on or off: a float32 island inside an autocast region, with the
#   backward called inside the region, must be recomputed in float32.
# - **State updated by the forward.** BatchNorm's running statistics are left
#   alone by the replay. Any other buffer that a call changes (a spectral norm's
#   power-iteration vectors, a moving average) is copied before the call and the
#   replay runs on the copy, so it reads what the forward read and the buffer is
#   updated once.
# - **Everything the recomputation reads.** Every parameter (frozen ones too) and
#   buffer is checked for identity and in-place changes (an optimizer step before
#   `backward`, `torch.func.functional_call`); a change is an error. A fused
#   optimizer step changes weights without moving their version counters, which no
#   mode can detect (a PyTorch limitation).
# - **Hooks.** Inside the backward, parameter gradients are taken with respect to
#   detached aliases of the parameters; each parameter's summed gradient is handed
#   to the autograd engine once, so `register_hook` and DDP's reducer see one full
#   gradient, as in mode `"autograd"`.
#
# One example with most of these at once: token sequences split along the feature
# dimension, halves with a spectrally normalised linear map, RReLU and functional
# dropout, a hook on every parameter, and `model.eval()` called between forward
# and backward. In float64 the reversible gradients must equal autograd's to
# round-off, the spectral-norm buffers must be bit-equal, and every hook must fire
# exactly once; with the RNG replay switched off, the same step is wrong.

# %%
class NoisyHalf(nn.Module):
    """A half with a random activation, a buffer updated in every training forward, and dropout."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.lin = nn.utils.parametrizations.spectral_norm(nn.Linear(d, d))
        self.act = nn.RReLU()

    def forward(self, h):
        return torch.nn.functional.dropout(self.act(self.lin(h)), 0.2, self.training)


torch.manual_seed(0)
tricky = ReversibleSequence([AdditiveCoupling(NoisyHalf(), NoisyHalf(), dim=-1) for _ in range(3)]).double()
tokens = torch.randn(4, 6, 8, dtype=torch.float64)


def replay_step(mode, preserve_rng_state=True):
    m = copy.deepcopy(tricky)
    m.mode, m.preserve_rng_state = mode, preserve_rng_state
    hook_calls = []
    for p in m.parameters():
        p.register_hook(lambda g: hook_calls.append(1))
    torch.manual_seed(1)
    loss = (m(tokens) ** 2).sum()
    m.eval()  # e.g. an evaluation between forward and backward
    loss.backward()
    return SimpleNamespace(grads=[p.grad for p in m.parameters()], buffers=list(m.buffers()), hooks=len(hook_calls))


replay = {name: replay_step(*args) for name, args in
          {"autograd": ("autograd",), "reversible": ("reversible",), "no RNG replay": ("reversible", False)}.items()}
n_params = len(list(tricky.parameters()))
for name in ["reversible", "no RNG replay"]:
    r, ref = replay[name], replay["autograd"]
    err = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(r.grads, ref.grads))
    same_buffers = all(torch.equal(a, b) for a, b in zip(r.buffers, ref.buffers))
    print(f"{name!r:16s} gradients equal autograd's to round-off: {err < 1e-12}; "
          f"buffers bit-equal: {same_buffers}; hook calls: {r.hooks} for {n_params} parameters")
    replay[name].err = err
assert replay["autograd"].hooks == replay["reversible"].hooks == n_params
assert replay["reversible"].err < 1e-12
assert all(torch.equal(a, b) for a, b in zip(replay["reversible"].buffers, replay["autograd"].buffers))
assert replay["no RNG replay"].err > 1e-2

# %% [markdown]
# What the replay keeps is counted like any saved tensor: one CPU generator state
# per call that drew random numbers, and nothing for a deterministic chain.

# %%
state_bytes = torch.get_rng_state().numel()


def chain_of(make_half):
    return ReversibleSequence([AdditiveCoupling(make_half(), make_half(), dim=-1) for _ in range(3)]).double()


random_bytes = saved_tensor_bytes(chain_of(lambda: nn.Sequential(nn.Linear(4, 4), nn.RReLU())), tokens)
plain_bytes = saved_tensor_bytes(chain_of(lambda: nn.Linear(4, 4)), tokens)
output_bytes = tokens.numel() * tokens.element_size()
print(f"saved bytes, 3 blocks with RReLU halves: {random_bytes} = output {output_bytes} + 6 calls x {state_bytes}")
print(f"saved bytes, 3 deterministic blocks:     {plain_bytes} = the output alone")
assert random_bytes == output_bytes + 6 * state_bytes and plain_bytes == output_bytes

# %% [markdown]
# ## What we learned
#
# - Algorithm 1 follows from the chain rule applied to $z_1 = x_1 + F(x_2)$,
#   $y_2 = x_2 + G(z_1)$: two paths into $z_1$ and into $x_2$, one into $x_1$, and
#   parameter gradients from the same two vector-Jacobian products.
# - Evaluated in the right order, the step reconstructs the input and all
#   gradients with one evaluation of G and one of F.
# - The gradients equal autograd's: `gradcheck` passes in float64 (and a backward
#   that is 1% off fails it), and in float32 the relative error is far below
#   $10^{-5}$ on a RevNet-like stack.
# - Recomputation must not update BatchNorm's running statistics a second time and
#   must replay dropout's masks; both are checked against autograd, bit for bit for
#   the buffers and the RNG state.
# - In float32 the recomputed activations differ from the stored ones by rounding.
#   Almost always that changes the gradient by rounding too; but a ReLU input
#   within rounding of zero can flip sides, and the gradient is then the exact
#   gradient at a nearby point, off by far more than rounding.
# - Memory: reversible is flat in depth, autograd and per-block checkpointing grow
#   linearly, checkpointing in $\sqrt{L}$ segments grows like $\sqrt{L}$.
# - Time: at least 4/3 of an ordinary step by the evaluation count; the generic
#   inverse-then-reforward costs 5/3.
#
# ## Exercises
#
# 1. **Derivation.** Derive the backward step of the *affine* coupling
#    $y_1 = x_1$, $y_2 = x_2 \odot e^{s(x_1)} + t(x_1)$: reconstruct $x$, then
#    give $\bar x_1$, $\bar x_2$ and the parameter gradients in the style of
#    {eq}`eq-alg1-dz1`--{eq}`eq-alg1-dW`. How many evaluations of the
#    scale-and-shift network does it need? (Hint: one; $\bar x_2 = \bar y_2 \odot
#    e^{s}$, and $\bar x_1 = \bar y_1 + (\partial s/\partial x_1)^\top(\bar y_2 \odot
#    (y_2 - t)) + (\partial t/\partial x_1)^\top \bar y_2$.)
# 2. **Code change.** Modify `algorithm1_step` so that it evaluates F *before*
#    G. Which equation can no longer be evaluated, and what would you have to
#    store to make it work?
# 3. **Experiment.** Rerun the ReLU-kink cell with the batch doubled several
#    times and count the flips. Fit how the number of inputs "at risk" grows
#    with the number of ReLU inputs. Then replace `nn.ReLU` by `nn.Softplus(beta=20)`
#    and compare the largest gradient error.
# 4. **Experiment.** In the segment-checkpointing cell, try $k = 1, 2, 4, 8, 16$
#    at $L = 64$ and plot the peak against $k$. Where is the minimum, and how
#    does it compare with $\sqrt{L A / a}$?
# 5. **Derivation.** Recursive checkpointing keeps the input of the chain,
#    recomputes to its middle, keeps that, and recurses on each half. Show that
#    it keeps $O(\log L)$ tensors and costs $O(L \log L)$ evaluations.
