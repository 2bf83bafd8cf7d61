# %% [markdown]
# (ch-introduction)=
# # Introduction: the memory that backpropagation keeps
#
# Training a network with backpropagation needs, for every layer, the input the
# layer saw in the forward pass. Those saved activations, not the weights, are
# what fills the memory of a deep network in training, and they grow with depth.
# This chapter shows why backpropagation must keep them, measures how many bytes
# a plain residual network keeps as it gets deeper, and gives a first look at the
# way out that the rest of the book develops: reversible blocks, whose inputs can
# be recomputed from their outputs {cite:p}`gomez2017revnet`.

# %%
from itertools import pairwise

import matplotlib.pyplot as plt
import torch
from torch import nn

import revlib
from revlib.core.memory import MiB, SavedTensorMeter, saved_tensor_bytes
from revlib.harness.figures import plot_series
from revlib.harness.notebook import glue

_ = torch.manual_seed(0)

# %% [markdown]
# ## Why the backward pass needs the forward's activations
#
# Take a chain of layers $a_{l+1} = f_l(a_l; W_l)$, $l = 0, \dots, L-1$, and a
# scalar loss $\mathcal{L}(a_L)$. Write $\bar a_l = \partial \mathcal{L} / \partial a_l$
# for the gradient of the loss with respect to an activation (a column vector).
# The chain rule gives the backward recursion
#
# $$
# \bar a_l = \left(\frac{\partial f_l}{\partial a_l}\right)^{\!\top} \bar a_{l+1},
# \qquad
# \bar W_l = \left(\frac{\partial f_l}{\partial W_l}\right)^{\!\top} \bar a_{l+1}.
# $$ (eq-backward-recursion)
#
# Both Jacobians in {eq}`eq-backward-recursion` are evaluated *at the forward's point* $(a_l, W_l)$. For a
# linear layer $a_{l+1} = W_l a_l + b_l$ the weight gradient is the outer product
#
# $$
# \bar W_l = \bar a_{l+1}\, a_l^{\top},
# $$ (eq-linear-weight-grad)
#
# so it cannot be formed without the layer's input $a_l$. A nonlinearity has the
# same need: for $a_{l+1} = \mathrm{ReLU}(a_l)$ the Jacobian is
# $\mathrm{diag}(\mathbb{1}[a_l > 0])$, which depends on $a_l$. Autograd therefore
# saves, during the forward, every tensor that some vector-Jacobian product of
# the backward (a product $v^\top J$ as in {eq}`eq-backward-recursion`) will read. These are kept until the backward has passed the
# layer, so at the end of the forward *all* of them are in memory at once: a
# network twice as deep keeps twice as many.
#
# We can watch this happen. `revlib.core.memory.SavedTensorMeter` installs
# `torch.autograd.graph.saved_tensors_hooks` and adds up the bytes of every
# tensor that autograd saves for the backward (each storage once, parameters left
# out). A linear layer saves exactly its input:

# %%
layer = nn.Linear(64, 32)
a = torch.randn(16, 64)
with SavedTensorMeter(exclude=layer.parameters()) as meter:
    out = layer(a)
input_bytes = a.numel() * a.element_size()
print(
    f"saved for backward: {meter.bytes} bytes in {meter.count} tensor; "
    f"the input has {input_bytes} bytes"
)
assert meter.bytes == input_bytes and meter.count == 1

# %% [markdown]
# And the weight gradient that autograd computes from it is the outer product
# {eq}`eq-linear-weight-grad`, $\bar W = \bar a_{\text{out}}\, a^\top$ (summed over the batch):

# %% tags=["nbval-ignore-output"]
grad_out = torch.randn(16, 32)
out.backward(grad_out)
by_hand = grad_out.T @ a
weight_grad_error = (layer.weight.grad - by_hand).abs().max().item()
print(
    "largest difference between autograd's weight "
    f"gradient and grad_out^T a: {weight_grad_error:.1e}"
)
assert weight_grad_error < 1e-5

# %% [markdown]
# ## A plain residual network, measured
#
# Now a residual network {cite:p}`he2016resnet` of the kind RevNet starts from: blocks of
# convolution, batch normalisation and ReLU with an identity shortcut,
# $a_{l+1} = \mathrm{ReLU}(a_l + \mathrm{BN}(\mathrm{conv}(\mathrm{ReLU}(\mathrm{BN}(\mathrm{conv}(a_l))))))$,
# written as an ordinary PyTorch module. All blocks keep the shape of their input
# (16 channels on a 16 x 16 grid, a batch of 8), so every block's activations have
# the same size, and we count the bytes saved for the backward as the stack deepens.


# %%
class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU (the basic ResNet block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


CHANNELS, BATCH, SIZE = 16, 8, 16
x = torch.randn(BATCH, CHANNELS, SIZE, SIZE)
activation_bytes = x.numel() * x.element_size()  # one activation tensor, A
depths = [1, 2, 4, 8, 16, 32]
plain_bytes = {}
for depth in depths:
    net = nn.Sequential(*[ResidualBlock(CHANNELS) for _ in range(depth)])
    plain_bytes[depth] = saved_tensor_bytes(net, x)
    print(
        f"depth {depth:2d}: {plain_bytes[depth]:>10,d} bytes "
        f"= {plain_bytes[depth] / activation_bytes:7.3f} A"
    )

# %% [markdown]
# The growth is exactly linear: every added block adds the same number of bytes.
# The next cell checks this to the byte and explains the increment. Per block,
# autograd keeps four activation-sized tensors: the input of the first convolution
# (the block's input), the input of each BatchNorm (the two convolution outputs),
# and the ReLU output inside the block, which is also what the second convolution
# reads, so it is stored once. Each BatchNorm also keeps its batch mean and inverse
# standard deviation, 2 x 16 floats. The block's final ReLU output is the next
# block's input, so it is counted once too; the deepest block's output adds one
# more tensor $A$ at the top of the stack. (BatchNorm {cite:p}`ioffe2015batchnorm`
# normalises each channel with its batch statistics, so its backward needs them.)

# %%
increments = [
    (plain_bytes[b] - plain_bytes[a]) / (b - a) for a, b in pairwise(depths)
]
per_block = increments[0]
bn_stats_bytes = (
    2 * 2 * CHANNELS * 4
)  # two BatchNorms, each a mean and an inverse std, float32
assert all(inc == per_block for inc in increments), increments
assert per_block == 4 * activation_bytes + bn_stats_bytes
assert all(plain_bytes[d] == activation_bytes + d * per_block for d in depths)
glue("intro_A_bytes", activation_bytes, display=False)
glue("intro_per_block", int(per_block), display=False)
glue("intro_bn_stats_bytes", bn_stats_bytes, display=False)
glue("intro_depth32_mib", plain_bytes[32] / MiB, display=False)
stack32 = nn.Sequential(*[ResidualBlock(CHANNELS) for _ in range(32)])
weight_bytes32 = sum(p.numel() * p.element_size() for p in stack32.parameters())
assert (
    plain_bytes[32] > 5 * weight_bytes32
)  # measured: activations outweigh the weights
glue("intro_weights32_kib", weight_bytes32 / 1024, display=False)
glue("intro_act_to_weights32", plain_bytes[32] / weight_bytes32, display=False)
print(
    f"A = {activation_bytes:,d} bytes; each block adds "
    f"{int(per_block):,d} bytes = 4 A + {bn_stats_bytes} bytes"
)
print(
    f"saved bytes = A + depth x {int(per_block):,d}, exactly, at every depth measured"
)

# %% [markdown]
# So one activation tensor here is $A$ = {glue:text}`intro_A_bytes:,` bytes, and every
# residual block adds {glue:text}`intro_per_block:,` bytes: $4A$ plus
# {glue:text}`intro_bn_stats_bytes` bytes of BatchNorm statistics. At 32 blocks the stack keeps
# {glue:text}`intro_depth32_mib:.1f` MiB of activations for a batch of only eight
# 16 x 16 images, {glue:text}`intro_act_to_weights32:.0f` times the
# {glue:text}`intro_weights32_kib:.0f` KiB of its float32 weights. Real networks
# keep far more, as the next cell's quoted numbers show.

# %%
# Quoted, not measured here: MemCNN's README (a third-party PyTorch re-implementation)
# reports the activation memory of a ResNet-110 on CIFAR-10. The parameter count is
# that of the official RevNet code, which chapter 4 rebuilds and counts.
RESNET110_ACTIVATIONS_MB = 810.7  # MemCNN README (quoted)
RESNET110_PARAMETERS = 1_727_962  # official code, CIFAR-10 (quoted)
resnet110_weights_mb = RESNET110_PARAMETERS * 4 / 1e6  # float32
print(
    f"ResNet-110 (quoted): activations {RESNET110_ACTIVATIONS_MB} MB, "
    f"weights {resnet110_weights_mb:.1f} MB"
)
glue("resnet110_act_mb", RESNET110_ACTIVATIONS_MB, display=False)
glue("resnet110_weights_mb", resnet110_weights_mb, display=False)
glue(
    "resnet110_act_to_weights",
    RESNET110_ACTIVATIONS_MB / resnet110_weights_mb,
    display=False,
)

# %% [markdown]
# For a ResNet-110 on CIFAR-10, the README of MemCNN {cite:p}`leemput2019memcnn` reports
# {glue:text}`resnet110_act_mb` MB of activations at its training batch size (a third-party measurement,
# quoted), while its float32 weights take {glue:text}`resnet110_weights_mb:.1f` MB:
# by this arithmetic on quoted numbers, the activations are about
# {glue:text}`resnet110_act_to_weights:.0f` times the weights
# ({ref}`ch-architectures` measures the same network's activations itself). The memory of training is, to first order,
# *depth x batch x activation size*.
#
# ## The way out, in one plot
#
# A *reversible* block computes its output so that its input can be recomputed
# from it exactly. RevNet's block {cite:p}`gomez2017revnet` splits the channels into two
# halves and computes $y_1 = x_1 + F(x_2)$, $y_2 = x_2 + G(y_1)$; given $y$, the
# input is $x_2 = y_2 - G(y_1)$, $x_1 = y_1 - F(x_2)$. A chain of such blocks need
# not store any block's activations: the backward pass rebuilds each block's input
# from its output, one block at a time ({ref}`ch-backprop`). `revlib.ReversibleSequence`
# does this. Below, the same width (two halves of 8 channels, F and G each
# BN-ReLU-conv), counted in its default mode `"reversible"` and in mode
# `"autograd"`, which runs the same blocks with ordinary autograd.


# %%
def half(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
    )


rev_bytes, autograd_bytes = {}, {}
for depth in depths:
    chain = revlib.ReversibleSequence(
        [
            revlib.AdditiveCoupling(half(CHANNELS // 2), half(CHANNELS // 2))
            for _ in range(depth)
        ]
    )
    rev_bytes[depth] = saved_tensor_bytes(chain, x)
    chain.mode = "autograd"
    autograd_bytes[depth] = saved_tensor_bytes(chain, x)
    print(
        f"depth {depth:2d}: reversible {rev_bytes[depth]:>9,d} bytes   "
        f"same blocks with autograd {autograd_bytes[depth]:>10,d} bytes"
    )

assert (
    len(set(rev_bytes.values())) == 1
)  # flat: the same number of bytes at every depth
assert rev_bytes[1] == activation_bytes  # only the chain's output is kept
assert all(autograd_bytes[b] > autograd_bytes[a] for a, b in pairwise(depths))
glue("intro_rev_bytes", rev_bytes[32], display=False)
glue("intro_autograd32_bytes", autograd_bytes[32], display=False)

# %% tags=["remove-output"]
fig = plot_series(
    depths,
    {
        "plain residual stack (autograd)": [plain_bytes[d] / MiB for d in depths],
        "RevNet blocks, mode 'autograd'": [autograd_bytes[d] / MiB for d in depths],
        "RevNet blocks, mode 'reversible'": [rev_bytes[d] / MiB for d in depths],
    },
    xlabel="number of blocks",
    ylabel="saved for backward (MiB)",
    title="Activation memory vs depth (batch 8, 16 channels, 16 x 16, float32)",
)
glue("fig_memory_depth", fig, display=False)
plt.show()

# %% [markdown]
# ```{glue:figure} fig_memory_depth
# :name: fig-memory-depth
#
# Bytes that autograd saves for the backward pass, against the number of blocks.
# A plain residual stack and RevNet blocks run with ordinary autograd grow
# linearly; the same RevNet blocks with the reversible backward keep one
# activation tensor at every depth.
# ```
#
# The reversible chain keeps {glue:text}`intro_rev_bytes:,` bytes at every depth,
# exactly one activation tensor (its output), where the same 32 blocks under ordinary
# autograd keep {glue:text}`intro_autograd32_bytes:,` bytes ({numref}`fig-memory-depth`).
# That is what is kept *between* the forward and the backward. During the
# backward, the reversible chain still rebuilds one block's input and runs that
# block again with ordinary autograd, so it holds one block's internals at a time
# on top: a constant, the same at 2 blocks as at 2,000, but not zero.
# The price is compute: the backward pass evaluates F and G a second time.
# {ref}`ch-backprop` derives the
# backward, checks that its gradients equal autograd's, and measures the extra time
# (by count, four evaluations of each layer where autograd makes three, 4/3 of
# the work; the chapter times it on a CPU).
#
# ## What this book covers
#
# 1. **Introduction** (this chapter): why backprop stores activations, and how much.
# 2. {ref}`ch-coupling`: the NICE {cite:p}`dinh2015nice`, RevNet (additive) and
#    Real NVP {cite:p}`dinh2017realnvp` (affine) couplings; their inverses and
#    Jacobian determinants, derived and checked numerically; what limits exact
#    inversion in floating point.
# 3. {ref}`ch-backprop`: Algorithm 1 of {cite:t}`gomez2017revnet` derived step by
#    step, the implementation, gradient checks against autograd (BatchNorm and
#    dropout included), memory and time of the reversible, autograd and
#    checkpoint modes, beside gradient checkpointing {cite:p}`chen2016checkpoint`.
# 4. {ref}`ch-architectures`: RevNet, ResNet, Rev-VGG and VGG-19 built in full,
#    parameters counted and activation memory measured.
# 5. {ref}`ch-ode`: a residual block as a forward-Euler step
#    {cite:p}`haber2017stable`; Jacobian eigenvalues, and how perturbations grow
#    or shrink with depth.
# 6. {ref}`ch-hamiltonian`: reversible discretisations of ODEs
#    {cite:p}`chang2018reversible` that can be made arbitrarily deep.
# 7. {ref}`ch-training`: ResNet, RevNet and the ODE networks trained on real data
#    (Fashion-MNIST) at equal size, half the papers' widths, for 16 epochs chosen
#    by a pilot, beside simple baselines; reversible against autograd training,
#    seed by seed; small training sets; and the papers' accuracies, labelled as
#    theirs.
# 8. {ref}`ch-beyond`: i-RevNet, reversible transformers and momentum networks.
#
# ## What we learned
#
# - The backward pass evaluates each layer's Jacobians at the forward's point, so
#   autograd keeps the inputs of the layers until the backward reaches them.
# - For a plain residual stack the kept bytes grow exactly linearly with depth,
#   here four activation tensors (plus BatchNorm's statistics) per block.
# - A chain of reversible blocks keeps only its output: its *activation* memory
#   does not grow with depth at all. Its parameters, their gradients and the
#   optimizer's state still grow with depth, as in any network; what goes away
#   is the term proportional to depth x batch x activation size.
#
# ## Exercises
#
# 1. **Derivation.** For $a_{l+1} = \tanh(W_l a_l)$, write out $\bar a_l$ and
#    $\bar W_l$ from {eq}`eq-backward-recursion`. Which tensor must autograd
#    save: the input $a_l$, the output $a_{l+1}$, or both?
# 2. **Counting.** The plain residual block above keeps four activation-sized
#    tensors. Replace `nn.ReLU()` by `nn.ReLU(inplace=True)` inside the block and
#    measure again with `saved_tensor_bytes`. Does the count change? Explain
#    from what each layer saves (BatchNorm saves its input, ReLU its output).
# 3. **Experiment.** Double the batch, then the image side, and measure the
#    per-block increment each time. Check that it scales like
#    batch x height x width, and explain the part that does not (the
#    BatchNorm statistics).
# 4. **Memory budget.** With the per-block bytes measured above, how many
#    blocks fit in 16 GiB for a batch of 128 images of 32 x 32 with 16
#    channels? How many for the reversible chain, if parameters, gradients and
#    momentum (three float32 copies of the weights) are all that grows?
# 5. **Code change.** `SavedTensorMeter` excludes parameters. Construct a layer
#    for which the meter counts a tensor that is not an activation (hint: a
#    buffer, or a weight transformed in the forward such as `W.t()`), and
#    decide whether it belongs in the count.
#
# ## Solutions
#
# Each solution is folded; open it after trying the exercise. Where a solution
# has a number, the folded code cell above it computes and checks it.

# %% tags=["hide-cell"]
linear_tanh = nn.Sequential(nn.Linear(64, 64, bias=False), nn.Tanh())
a_in = torch.randn(32, 64)
saved_lt = saved_tensor_bytes(linear_tanh, a_in)
one_activation = a_in.numel() * a_in.element_size()
print(
    f"Linear + tanh: saved {saved_lt:,} bytes "
    f"= {saved_lt / one_activation:g} activations (input and output)"
)
assert saved_lt == 2 * one_activation

# %% [markdown]
# ```{admonition} Solution 1 (what tanh layers save)
# :class: dropdown
#
# With $u_l = W_l a_l$ and $a_{l+1} = \tanh(u_l)$, the chain rule and
# $\tanh' = 1 - \tanh^2$ give $\bar u_l = \bar a_{l+1} \odot (1 - a_{l+1}^2)$, then
# $\bar a_l = W_l^\top \bar u_l$ and $\bar W_l = \bar u_l\, a_l^\top$ (summed over
# the batch). $\bar u_l$ needs the output $a_{l+1}$, $\bar W_l$ needs the input
# $a_l$, and $\bar a_l$ needs only the weight. So autograd keeps both: the folded
# cell counts exactly two activation tensors for one `Linear` + `Tanh` (the weight
# is a parameter, not counted). In a deep stack the output of layer $l$ is the
# input of layer $l + 1$, the same tensor, so it is kept once per layer, not
# twice.
# ```


# %% tags=["hide-cell"]
class ResidualBlockInplace(ResidualBlock):
    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.body[2] = nn.ReLU(inplace=True)


inplace_bytes = saved_tensor_bytes(
    nn.Sequential(*[ResidualBlockInplace(CHANNELS) for _ in range(4)]), x
)
print(
    f"4 blocks: {plain_bytes[4]:,} bytes with nn.ReLU(), "
    f"{inplace_bytes:,} bytes with nn.ReLU(inplace=True)"
)
assert inplace_bytes == plain_bytes[4]

# %% [markdown]
# ```{admonition} Solution 2 (an in-place ReLU)
# :class: dropdown
#
# The count does not change (the folded cell measures 4 blocks both ways). The
# BatchNorm before the ReLU saves its *input* (the first convolution's output),
# not its output, so overwriting its output in place destroys nothing it needs.
# The ReLU saves its output, which is also the second convolution's input, one
# tensor either way. In-place activation saves the *temporary* memory of the
# forward (one fewer live tensor at a time), not what autograd keeps for the
# backward.
# ```


# %% tags=["hide-cell"]
def per_block_bytes(batch: int, size: int) -> int:
    xs = torch.randn(batch, CHANNELS, size, size)
    one = saved_tensor_bytes(nn.Sequential(ResidualBlock(CHANNELS)), xs)
    two = saved_tensor_bytes(
        nn.Sequential(ResidualBlock(CHANNELS), ResidualBlock(CHANNELS)), xs
    )
    return two - one


scaling_rows = []
for batch, size in [(BATCH, SIZE), (2 * BATCH, SIZE), (2 * BATCH, 2 * SIZE)]:
    inc = per_block_bytes(batch, size)
    A_here = batch * CHANNELS * size * size * 4
    scaling_rows.append((batch, size, inc, (inc - 4 * A_here)))
    print(
        f"batch {batch:2d}, {size} x {size}: "
        f"per block {inc:,} bytes = 4 A + {inc - 4 * A_here} bytes"
    )
assert all(
    rest == bn_stats_bytes for *_, rest in scaling_rows
)  # the part that does not scale

# %% [markdown]
# ```{admonition} Solution 3 (what scales with the batch and the image)
# :class: dropdown
#
# The per-block increment is $4A$ plus a constant: $A$ doubles with the batch and
# quadruples when the image side doubles, while the remainder stays at
# {glue:text}`intro_bn_stats_bytes` bytes in all three runs of the folded cell.
# That remainder is BatchNorm's saved mean and inverse standard deviation, one
# number per channel each, which depend on the number of channels only.
# ```

# %% tags=["hide-cell"]
budget = 16 * 2**30
A_128 = 128 * CHANNELS * 32 * 32 * 4
per_block_128 = 4 * A_128 + bn_stats_bytes
blocks_autograd = (budget - A_128) // per_block_128
rev_block = revlib.AdditiveCoupling(half(CHANNELS // 2), half(CHANNELS // 2))
params_per_rev_block = sum(p.numel() for p in rev_block.parameters())
# kept by the reversible chain: its output, plus one block's internals during the
# backward
rev_chain_one = revlib.ReversibleSequence(
    [revlib.AdditiveCoupling(half(CHANNELS // 2), half(CHANNELS // 2))]
)
rev_chain_one.mode = "autograd"
x_128 = torch.randn(128, CHANNELS, 32, 32)
fixed_rev = A_128 + saved_tensor_bytes(rev_chain_one, x_128)
blocks_reversible = (budget - fixed_rev) // (3 * 4 * params_per_rev_block)
print(
    f"plain residual blocks, autograd: A = {A_128 / MiB:.0f} MiB, "
    f"{per_block_128:,} bytes per block "
    f"-> {blocks_autograd} blocks in 16 GiB"
)
print(
    f"reversible chain: {fixed_rev / MiB:.1f} MiB that do not grow, "
    f"{params_per_rev_block:,} parameters x 3 copies "
    f"x 4 bytes per block -> {blocks_reversible:,} blocks"
)
assert 500 < blocks_autograd < 520 and blocks_reversible > 100_000
glue("budget_autograd", int(blocks_autograd), display=False)
glue("budget_reversible", int(blocks_reversible), display=False)
glue("budget_params", params_per_rev_block, display=False)

# %% [markdown]
# ```{admonition} Solution 4 (a memory budget)
# :class: dropdown
#
# At batch 128 and 32 x 32, $A = 128 \cdot 16 \cdot 32 \cdot 32 \cdot 4$ bytes
# $= 8$ MiB and a plain block keeps $4A$ plus 256 bytes, so 16 GiB hold
# {glue:text}`budget_autograd` blocks (after the one $A$ at the top). The
# reversible chain keeps its output and, during the backward, one block's
# internals; what grows is three float32 copies of each block's
# {glue:text}`budget_params` parameters (weights, gradients, momentum), so
# 16 GiB hold {glue:text}`budget_reversible:,` blocks. Long before that, time
# is the limit: each block costs the same compute at any depth.
# ```


# %% tags=["hide-cell"]
class ScaledLinear(nn.Module):
    """A linear layer whose weight is transformed in the forward: x -> x (2W)^T."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d, d) / d**0.5)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v @ (2 * self.weight).t()


saved_scaled = saved_tensor_bytes(
    ScaledLinear(64), a_in.clone().requires_grad_(True)
)  # an input that needs a gradient
weight_sized = 64 * 64 * 4
print(
    f"ScaledLinear: saved {saved_scaled:,} bytes = input "
    f"{one_activation:,} + transformed weight {weight_sized:,}"
)
assert saved_scaled == one_activation + weight_sized

# %% [markdown]
# ```{admonition} Solution 5 (a saved tensor that is not an activation)
# :class: dropdown
#
# `ScaledLinear` multiplies its weight by 2 in the forward. The product is a new
# tensor, not a parameter, and the matrix product saves it to compute the input's
# gradient, so the meter counts it beside the input (the folded cell; the input
# must require a gradient, as any hidden layer's does, or autograd does not need
# it). Does it
# belong in the count? It is memory that autograd holds until the backward, so
# for a budget yes; but it does not scale with the batch or the image, and a
# reversible backward does not remove it: it grows with depth like the
# parameters. The cleaner fix is in the layer: compute $2(xW^\top)$ instead, and
# nothing weight-sized is saved.
# ```
