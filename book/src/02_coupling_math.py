# %% [markdown]
# (ch-coupling)=
# # Coupling math: NICE, additive and affine couplings
#
# A reversible block is a function whose input can be recovered from its output.
# An arbitrary network layer is not invertible in any useful sense, but a
# *coupling* is, whatever networks it contains: it splits its input into two
# halves and changes one half by an amount computed from the other half only.
# The inverse then subtracts (or divides out) that amount again, and never needs
# to invert the inner network. This chapter derives the inverses and the
# Jacobian determinants of the three couplings the book uses, and checks every
# formula numerically with `revlib`'s implementations.
#
# Throughout, an input $x$ of shape (batch, $C$, ...) is split along the channels
# into $x_1$ (the first $C/2$ channels) and $x_2$ (the rest). $F$, $G$, $m$, $s$, $t$
# are arbitrary networks that map a half to something of the same shape.

# %%
import copy
import math

import matplotlib.pyplot as plt
import torch
from torch import nn

import revlib
from revlib import AdditiveCoupling, AffineCoupling, NICECoupling, check_inverse
from revlib.harness.figures import DPI, plot_series
from revlib.harness.notebook import glue
from revlib.harness.schematics import draw_additive_coupling, draw_affine_coupling

_ = torch.manual_seed(0)

# %% [markdown]
# ## Three couplings and their inverses
#
# **NICE** {cite:p}`dinh2015nice`, the additive coupling:
#
# $$
# y_1 = x_1, \qquad y_2 = x_2 + m(x_1).
# $$
#
# Since $y_1 = x_1$, the network $m$ can be evaluated on the output side, and
#
# $$
# x_1 = y_1, \qquad x_2 = y_2 - m(y_1).
# $$
#
# **RevNet** {cite:p}`gomez2017revnet` changes both halves, one after the other:
#
# $$
# y_1 = x_1 + F(x_2), \qquad y_2 = x_2 + G(y_1).
# $$ (eq-revnet-forward)
#
# Undo the second update first: $y_1$ is known, so $x_2 = y_2 - G(y_1)$; with $x_2$
# known, $x_1 = y_1 - F(x_2)$:
#
# $$
# x_2 = y_2 - G(y_1), \qquad x_1 = y_1 - F(x_2).
# $$ (eq-revnet-inverse)
#
# {numref}`fig-additive-coupling` draws both directions. The inverse runs the
# same two networks, in the opposite order, with subtraction in place of
# addition.

# %% tags=["remove-output"]
fig = draw_additive_coupling()
glue("fig_additive_coupling", fig, display=False)
plt.show()

# %% [markdown]
# ```{glue:figure} fig_additive_coupling
# :name: fig-additive-coupling
#
# RevNet's additive coupling {eq}`eq-revnet-forward` (left) and its inverse
# {eq}`eq-revnet-inverse` (right). F and G are only ever evaluated forwards.
# ```
#
# **Real NVP** {cite:p}`dinh2017realnvp`, the affine coupling, also
# scales:
#
# $$
# y_1 = x_1, \qquad y_2 = x_2 \odot \exp\big(s(x_1)\big) + t(x_1),
# $$ (eq-affine-forward)
#
# and since $\exp(s) > 0$ never vanishes,
#
# $$
# x_1 = y_1, \qquad x_2 = \big(y_2 - t(y_1)\big) \odot \exp\big(-s(y_1)\big).
# $$ (eq-affine-inverse)
#
# {numref}`fig-affine-coupling` draws it in the layout of
# {numref}`fig-additive-coupling`. Only the second half changes, and one network
# computes both $s$ and $t$ from the first half, which passes through unchanged.
# The inverse undoes the two operations in the opposite order: it subtracts the
# shift first and then divides by the scale, multiplying by $\exp(-s)$.

# %% tags=["remove-output"]
fig = draw_affine_coupling()
glue("fig_affine_coupling", fig, display=False)
plt.show()

# %% [markdown]
# ```{glue:figure} fig_affine_coupling
# :name: fig-affine-coupling
#
# Real NVP's affine coupling {eq}`eq-affine-forward` (left) and its inverse
# {eq}`eq-affine-inverse` (right), drawn like {numref}`fig-additive-coupling`.
# The network $(s, t)$ reads only the half that passes unchanged, so the inverse
# can recompute it from the output; $\odot$ is the elementwise product.
# ```
#
# In `revlib`, `NICECoupling(m)`, `AdditiveCoupling(F, G)` and `AffineCoupling(net)`
# implement these (`net` returns $s$ and $t$ stacked along the channels). Each has
# `forward` and `inverse`; `revlib.check_inverse(block, x)` returns the largest
# absolute error $\max |f^{-1}(f(x)) - x|$. We build each coupling with small
# convolutional networks inside and check it in float64 and in float32.


# %% tags=["nbval-ignore-output"]
def small_net(channels: int, out_channels: int | None = None) -> nn.Sequential:
    """A small shape-preserving network: conv, tanh, conv."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(channels, out_channels or channels, 3, padding=1),
    )


HALF = 2  # channels per half
couplings = {
    "NICE": NICECoupling(small_net(HALF)),
    "additive (RevNet)": AdditiveCoupling(small_net(HALF), small_net(HALF)),
    "affine (Real NVP)": AffineCoupling(small_net(HALF, 2 * HALF)),
}
x64 = torch.randn(4, 2 * HALF, 6, 6, dtype=torch.float64)
inverse_errors = {}
for name, block in couplings.items():
    err32 = check_inverse(block.float(), x64.float())
    err64 = check_inverse(block.double(), x64)
    inverse_errors[name] = (err32, err64)
    print(
        f"{name:18s}  max |inverse(forward(x)) - x|: "
        f"float32 {err32:.1e}, float64 {err64:.1e}"
    )
    assert err64 < 1e-13 and err32 < 1e-5
glue(
    "coupling_max_err64",
    max(e64 for _, e64 in inverse_errors.values()),
    display=False,
)
glue(
    "coupling_max_err32",
    max(e32 for e32, _ in inverse_errors.values()),
    display=False,
)

# %% [markdown]
# The reconstruction is exact up to rounding: at most {glue:text}`coupling_max_err64:.1e`
# in float64 and {glue:text}`coupling_max_err32:.1e` in float32 (the printed values
# vary in the last digits with the machine). At no point was an inner network
# inverted: the inverses only evaluate $m$, $F$, $G$, $s$ and $t$ forwards, so these
# can be any networks, invertible or not.
#
# ## Jacobians and their determinants
#
# Stack the halves into one vector, $x = (x_1, x_2)$. The Jacobian of a coupling
# is a $2 \times 2$ block matrix, and the determinant is what a normalising flow
# (NICE, Real NVP) needs for the change-of-variables formula
# $\log p_X(x) = \log p_Y(f(x)) + \log|\det \partial f / \partial x|$.
#
# **NICE.** $\partial y_1/\partial x_1 = I$, $\partial y_1/\partial x_2 = 0$,
# $\partial y_2/\partial x_1 = \partial m/\partial x_1$, $\partial y_2/\partial x_2 = I$:
#
# $$
# J_{\text{NICE}} = \begin{pmatrix} I & 0 \\ \dfrac{\partial m}{\partial x_1} & I \end{pmatrix},
# \qquad \det J_{\text{NICE}} = \det I \cdot \det I = 1 .
# $$
#
# A block-triangular matrix has the product of its diagonal blocks' determinants as
# its determinant, whatever the off-diagonal block is.
#
# **Affine.** Only the lower-right block changes: $y_2$ depends on $x_2$ through
# the elementwise product with $\exp(s(x_1))$, so
#
# $$
# J_{\text{affine}} = \begin{pmatrix} I & 0 \\ \dfrac{\partial y_2}{\partial x_1} & \operatorname{diag}\big(\exp(s(x_1))\big) \end{pmatrix},
# \qquad \log\lvert\det J_{\text{affine}}\rvert = \sum_i s_i(x_1).
# $$
#
# The log-determinant costs nothing beyond the forward: it is the sum of the
# scales. `AffineCoupling.log_det(x)` returns it, one value per sample.
#
# **RevNet.** Now both halves change and the Jacobian is *not* triangular:
# $y_1 = x_1 + F(x_2)$ depends on $x_2$, and $y_2 = x_2 + G(y_1)$ depends on $x_1$
# through $y_1$. But the block is the composition of two triangular maps,
# $f = g \circ h$ with
#
# $$
# h: (x_1, x_2) \mapsto \big(x_1 + F(x_2),\; x_2\big), \qquad
# g: (z_1, z_2) \mapsto \big(z_1,\; z_2 + G(z_1)\big),
# $$
#
# $$
# J_h = \begin{pmatrix} I & \dfrac{\partial F}{\partial x_2} \\ 0 & I \end{pmatrix}, \qquad
# J_g = \begin{pmatrix} I & 0 \\ \dfrac{\partial G}{\partial z_1} & I \end{pmatrix}, \qquad
# J_{\text{RevNet}} = J_g\, J_h, \qquad \det J_{\text{RevNet}} = 1 \cdot 1 = 1 .
# $$ (eq-revnet-jacobian)
#
# Multiplied out, with $F' = \partial F/\partial x_2$ at $x_2$ and
# $G' = \partial G/\partial z_1$ at $z_1 = y_1$,
#
# $$
# J_{\text{RevNet}} = \begin{pmatrix} I & F' \\ G' & I + G' F' \end{pmatrix} :
# $$ (eq-revnet-jacobian-full)
#
# the lower-left block $G'$ and the product $G'F'$ are what make it full.
#
# Each factor is a NICE coupling (the first one with the roles of the halves
# exchanged), so a RevNet block is two NICE couplings in a row and preserves
# volume: it can neither contract nor expand volumes, whatever F and G are.
#
# ### Checked numerically
#
# We compute the full Jacobian of each coupling with
# `torch.autograd.functional.jacobian` on one float64 sample of shape
# (1, 4, 3, 3), which is a $36 \times 36$ matrix, and look at its blocks and its
# determinant.

# %%
x = torch.randn(1, 2 * HALF, 3, 3, dtype=torch.float64)
D = x.numel()
n1 = D // 2  # the first half's entries come first in the flattened (C, H, W) order


def full_jacobian(fn, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(fn, x).reshape(x.numel(), x.numel())


jacobians, logdets = {}, {}
for name, block in couplings.items():
    block.double()
    J = full_jacobian(block, x)
    sign, logabsdet = torch.linalg.slogdet(J)
    jacobians[name], logdets[name] = J, logabsdet.item()
    print(
        f"{name:18s} J is {J.shape[0]}x{J.shape[1]}; "
        f"max |upper-right block| = {J[:n1, n1:].abs().max().item():.3f}; "
        "diagonal blocks are identity: "
        f"{torch.equal(J[:n1, :n1], torch.eye(n1, dtype=J.dtype))}, "
        f"{torch.allclose(J[n1:, n1:], torch.eye(n1, dtype=J.dtype))}; "
        f"sign of det = {sign.item():+.0f}"
    )

# NICE and affine: block lower-triangular, exactly.
for name in ["NICE", "affine (Real NVP)"]:
    assert torch.count_nonzero(jacobians[name][:n1, n1:]) == 0
    assert torch.equal(jacobians[name][:n1, :n1], torch.eye(n1, dtype=torch.float64))
# RevNet: not triangular, but determinant 1.
assert jacobians["additive (RevNet)"][:n1, n1:].abs().max() > 0.01

# %% [markdown]
# The upper-right block of the NICE and affine Jacobians is exactly zero, the
# upper-left is exactly the identity, and RevNet's upper-right block is not zero.
# Now the determinants, in the next cell: for the additive couplings
# $\log|\det J|$ is zero up to rounding, for the affine one it equals
# `AffineCoupling.log_det`, and RevNet's Jacobian factors as $J_g J_h$.

# %% tags=["nbval-ignore-output"]
affine = couplings["affine (Real NVP)"]
log_det_formula = affine.log_det(x).item()


def h_map(v):
    return torch.cat(
        [v[:, :HALF] + couplings["additive (RevNet)"].F(v[:, HALF:]), v[:, HALF:]],
        dim=1,
    )


def g_map(v):
    return torch.cat(
        [v[:, :HALF], v[:, HALF:] + couplings["additive (RevNet)"].G(v[:, :HALF])],
        dim=1,
    )


with torch.no_grad():
    z = h_map(x)
J_h, J_g = full_jacobian(h_map, x), full_jacobian(g_map, z)
factor_error = (J_g @ J_h - jacobians["additive (RevNet)"]).abs().max().item()

print(f"NICE:     log|det J| = {logdets['NICE']:+.2e}")
print(
    f"RevNet:   log|det J| = {logdets['additive (RevNet)']:+.2e}; "
    f" max |J_g J_h - J| = {factor_error:.1e}"
)
print(
    f"affine:   log|det J| = {logdets['affine (Real NVP)']:+.12f} "
    "(from the 36x36 Jacobian)"
)
print(f"          sum of s   = {log_det_formula:+.12f} (AffineCoupling.log_det)")
assert abs(logdets["NICE"]) < 1e-12
assert abs(logdets["additive (RevNet)"]) < 1e-12
assert factor_error < 1e-12
assert abs(logdets["affine (Real NVP)"] - log_det_formula) < 1e-10
glue("affine_logdet_jacobian", logdets["affine (Real NVP)"], display=False)
glue("affine_logdet_formula", log_det_formula, display=False)

# %% [markdown]
# The affine coupling's log-determinant from the full $36 \times 36$ Jacobian,
# {glue:text}`affine_logdet_jacobian:.6f`, equals the sum of the scales,
# {glue:text}`affine_logdet_formula:.6f`, as derived. The picture of the three
# Jacobians shows the structure: the zero upper-right block of NICE and the affine
# coupling, RevNet's full matrix (the product of two triangular ones), and the
# diagonal that the affine coupling scales away from 1.

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), dpi=DPI)
for ax, (name, J) in zip(axes, jacobians.items(), strict=True):
    image = ax.imshow(J.abs().numpy(), cmap="magma", vmin=0, vmax=1.5)
    ax.axhline(n1 - 0.5, color="cyan", lw=0.8)
    ax.axvline(n1 - 0.5, color="cyan", lw=0.8)
    ax.set_title(f"|J|, {name}")
    ax.set_xticks([n1 // 2, n1 + n1 // 2], ["x1", "x2"])
    ax.set_yticks([n1 // 2, n1 + n1 // 2], ["y1", "y2"])
fig.colorbar(image, ax=axes, shrink=0.85, label="|Jacobian entry| (clipped at 1.5)")
plt.show()

# %% [markdown]
# ## Bounding the scale
#
# The affine inverse multiplies by $\exp(-s)$. If the scale network ever returns a
# large $s$, the forward's $\exp(s)$ overflows: float32 holds numbers up to about
# $3.4 \times 10^{38}$, so $\exp(s)$ is infinite once $s > \ln(3.4 \times 10^{38}) \approx 88.7$,
# and the inverse then computes $\infty \cdot 0$ or $\infty - \infty$, which is NaN.
# (Long before that, large scales amplify rounding errors.) `AffineCoupling`
# therefore bounds the scale by default: with `scale_bound=b` it uses
# $s = b \tanh(s_{\text{raw}}/b)$, so $|s| < b$, and the inverse stays finite for
# any input. To see the difference, give both versions a scale network whose raw
# output is large: $s_{\text{raw}} = 60\,x_1$ on standard-normal data.


# %% tags=["nbval-ignore-output"]
class LargeScale(nn.Module):
    """Returns (s_raw, t) = (60 x1, x1): a stand-in for a badly scaled network."""

    def forward(self, x1: torch.Tensor) -> torch.Tensor:
        return torch.cat([60.0 * x1, x1], dim=1)


x32 = torch.randn(4, 8, 4, 4)
float32_exp_limit = math.log(torch.finfo(torch.float32).max)
raw_max = (60.0 * x32[:, :4]).max().item()
print(
    f"largest raw scale: {raw_max:.1f}; "
    f"float32 exp overflows above {float32_exp_limit:.2f}"
)
results = {}
for bound in [None, 2.0]:
    block = AffineCoupling(LargeScale(), scale_bound=bound)
    y = block(x32)
    results[bound] = (torch.isfinite(y).all().item(), check_inverse(block, x32))
    print(
        f"scale_bound={bound}: forward finite: {results[bound][0]}; "
        f"reconstruction error: {results[bound][1]:.1e}"
    )
assert raw_max > float32_exp_limit
assert results[None][0] is False and not math.isfinite(
    results[None][1]
)  # inf in the forward, NaN back
assert results[2.0][0] is True and results[2.0][1] < 1e-5

# %% [markdown]
# Unbounded, the forward already holds infinities and the reconstruction is NaN;
# bounded at 2, the same network gives a finite forward and a reconstruction error
# at float32 rounding level. The bound costs expressiveness (each coupling can
# scale by at most $e^{2}$), but a flow stacks many couplings.
#
# ## Exact in algebra, not in floating point
#
# The inverse is exact in exact arithmetic. In floating point, every subtraction
# $x_2 = y_2 - G(y_1)$ recovers $x_2$ only up to the rounding of the forward's sum
# and of the recomputed $G(y_1)$, and in a chain the error of one block's
# reconstruction becomes an input of the next block's. So the reconstruction error
# grows with depth. This matters for reversible backprop ({ref}`ch-backprop`), which
# recomputes every block's input from the block's output instead of storing it.
# We measure $\max|f^{-1}(f(x)) - x|$ for chains of RevNet blocks with the same
# weights in float32 and in float64.

# %% tags=["nbval-ignore-output"]
depths = [1, 2, 4, 8, 16, 32, 64, 128]
CH = 8  # channels per half
x_chain = torch.randn(2, 2 * CH, 6, 6, dtype=torch.float64)
chain_errors = {"float32": [], "float64": []}
for depth in depths:
    torch.manual_seed(depth)
    chain = revlib.ReversibleSequence(
        [AdditiveCoupling(small_net(CH), small_net(CH)) for _ in range(depth)]
    )
    chain_errors["float32"].append(check_inverse(chain.float(), x_chain.float()))
    chain_errors["float64"].append(check_inverse(chain.double(), x_chain))
for d, e32, e64 in zip(
    depths, chain_errors["float32"], chain_errors["float64"], strict=True
):
    print(f"{d:4d} blocks: float32 {e32:.1e}   float64 {e64:.1e}")
e32, e64 = chain_errors["float32"], chain_errors["float64"]
assert e32[-1] > 10 * e32[0]  # float32 error grows with depth
assert all(
    a > 1e6 * b for a, b in zip(e32, e64, strict=True)
)  # float64 is many orders of magnitude smaller
assert max(e64) < 1e-12 and max(e32) < 1e-3
glue("chain_err32_deep", e32[-1], display=False)
glue("chain_err32_one", e32[0], display=False)
glue("chain_err64_deep", e64[-1], display=False)
glue("chain_depth_max", depths[-1], display=False)

# %%
plot_series(
    depths,
    {"float32": e32, "float64": e64},
    xlabel="number of RevNet blocks",
    ylabel="max |inverse(forward(x)) - x|",
    logx=True,
    logy=True,
    title="Reconstruction error of a chain of additive couplings",
)
plt.show()

# %% [markdown]
# In float32 the error grows from {glue:text}`chain_err32_one:.1e` for one block to
# {glue:text}`chain_err32_deep:.1e` for {glue:text}`chain_depth_max` blocks (exact
# values vary with the machine; the cell checks at least a tenfold growth); in
# float64 it stays near {glue:text}`chain_err64_deep:.0e`. Gomez et al. train
# RevNets in float32, and these errors are small next to the activations. Small
# is not harmless, though: a reconstructed activation that lands on the other
# side of a ReLU's kink changes the gradient by far more than the rounding
# itself, and {ref}`sec-relu-kink` in {ref}`ch-backprop` measures such a case.
# That chapter checks the gradients themselves against autograd. How fast the
# error grows depends on how much each block contracts or amplifies
# perturbations: {ref}`sec-reversible-stability` in {ref}`ch-ode` shows that the
# inverse runs the block's ODE backward, so blocks that contract (Jacobian
# eigenvalues with negative real part) make the reconstruction error grow
# exponentially with depth, and only blocks with purely imaginary eigenvalues keep
# both directions stable.
#
# ### Half precision: bfloat16 and float16
#
# Training often runs in mixed precision: `torch.autocast` evaluates
# convolutions in bfloat16 or float16 and keeps other operations in float32.
# Where does the reconstruction lose accuracy then? Below, each coupling runs
# its forward and its inverse (i) under CPU autocast, with float32 inputs and
# weights, and (ii) entirely in the low precision (weights and data converted).
# The errors are compared with the unit roundoff $u$ of the format
# ($2^{-8}$ for bfloat16, $2^{-11}$ for float16) times $\max|x|$.

# %% tags=["nbval-ignore-output"]
x_half = torch.randn(4, 2 * HALF, 6, 6)
low_precision = {}
for name, block in couplings.items():
    block.float()
    for dtype in (torch.bfloat16, torch.float16):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            autocast_error = (
                (block.inverse(block(x_half)).float() - x_half).abs().max().item()
            )
        pure_error = check_inverse(copy.deepcopy(block).to(dtype), x_half.to(dtype))
        scale = (
            torch.finfo(dtype).eps / 2 * x_half.abs().max().item()
        )  # unit roundoff u times max|x|
        low_precision[name, dtype] = (autocast_error, pure_error, scale)
        print(
            f"{name:18s} {str(dtype)[6:]:9s} autocast: "
            f"{autocast_error:.1e} ({autocast_error / scale:5.2f} u max|x|)"
            f"   all in {str(dtype)[6:]}: "
            f"{pure_error:.1e} ({pure_error / scale:5.2f} u max|x|)"
        )
for (name, _dtype), (autocast_error, pure_error, scale) in low_precision.items():
    assert (
        pure_error > 0.1 * scale and pure_error <= 4 * scale
    )  # rounding of the low-precision sums
    if name == "affine (Real NVP)":
        assert (
            autocast_error > 0.1 * scale
        )  # exp(-s) is not the exact reciprocal of exp(s) in low precision
    else:
        assert (
            autocast_error < 1e-6
        )  # additive: float32 sums, identical recomputed F, G, m
glue(
    "half_affine_bf16_u",
    low_precision["affine (Real NVP)", torch.bfloat16][0]
    / low_precision["affine (Real NVP)", torch.bfloat16][2],
    display=False,
)

# %% [markdown]
# Under autocast the additive couplings (NICE, RevNet) still reconstruct to
# float32 rounding here: the networks run in low precision, but the inverse
# recomputes, almost always, *the same* low-precision values $F(x_2)$, $G(y_1)$
# from the same inputs, and the additions and subtractions are in float32, so the
# low precision cancels out. "Almost always": $G(y_1)$ is recomputed from the
# stored $y_1$ itself, but $F$ is recomputed from the *reconstructed* $x_2$, which
# equals the forward's $x_2$ only to float32 rounding; when that last-bit
# difference crosses a rounding boundary of the low format, the cast of $x_2$
# changes, $F$ sees a different input, and $x_1$ picks up an error of the order of
# the low format's roundoff. The cell after this paragraph counts how often. The affine coupling does not: its inverse multiplies by
# $\exp(-s)$, which in low precision is not the exact reciprocal of the
# forward's $\exp(s)$, and the error is of the order of the format's roundoff
# (here {glue:text}`half_affine_bf16_u:.1f` $u \max|x|$ for bfloat16).
# Entirely in low precision, every coupling loses about one roundoff of the
# largest value in its sums. Whether the recomputation sees the same autocast
# state as the forward is therefore part of exact reversibility;
# {ref}`app-engine` shows how `revlib` replays it.

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
revnet_block = AdditiveCoupling(small_net(HALF), small_net(HALF))
x_many = torch.randn(16384, 2 * HALF, 6, 6)
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    y_many = revnet_block(x_many)
    x2_rebuilt = y_many[:, HALF:] - revnet_block.G(
        y_many[:, :HALF]
    )  # the inverse's first step
    rebuilt = revnet_block.inverse(y_many).float()
x2_many = x_many[:, HALF:]
differ_f32 = int((x2_rebuilt.float() != x2_many).sum())
differ_bf16 = int((x2_rebuilt.float().bfloat16() != x2_many.bfloat16()).sum())
autocast_err = (rebuilt - x_many).abs()
print(
    f"x2 elements: {x2_many.numel():,}; "
    f"rebuilt x2 differs in float32: {differ_f32:,}; "
    f"its bfloat16 cast differs: {differ_bf16}"
)
print(
    f"largest reconstruction error {autocast_err.max().item():.1e}; "
    "elements off by more than 1e-5: "
    f"{int((autocast_err > 1e-5).sum())} of {x_many.numel():,}"
)
assert differ_bf16 < 1e-3 * differ_f32  # rare: almost always the same bfloat16 input
assert (differ_bf16 == 0) == (
    autocast_err.max().item() < 1e-5
)  # a flipped cast is what breaks float32 accuracy
glue("bf16_flips", differ_bf16, display=False)
glue("bf16_elements", x2_many.numel(), display=False)
glue("bf16_flip_error", autocast_err.max().item(), display=False)

# %% [markdown]
# In {glue:text}`bf16_elements:,` elements of $x_2$, the rebuilt value's
# bfloat16 cast differed from the forward's {glue:text}`bf16_flips` times, and
# the largest reconstruction error was then {glue:text}`bf16_flip_error:.0e`, of
# the order of bfloat16's roundoff instead of float32's (the count depends on the
# machine's kernels).
#
# ## What we learned
#
# - A coupling changes one half of its input by a function of the other half, so
#   its inverse only subtracts (or divides), whatever networks F, G, m, s, t are.
# - NICE and the affine coupling have block-triangular Jacobians: determinant 1
#   and $\exp(\sum s)$. A RevNet block is a composition of two such triangular maps,
#   so its determinant is 1 although its Jacobian is full.
# - The numerical Jacobians confirm the structure and the determinants; the
#   affine coupling's log-determinant is the sum of its scales.
# - Unbounded affine scales overflow in float32 and make the inverse NaN; a tanh
#   bound keeps it finite.
# - Reconstruction is exact only up to rounding, and the rounding error grows with
#   depth: many orders of magnitude larger in float32 than in float64.
# - Under autocast, additive couplings almost always reconstruct to float32
#   rounding, because the recomputed networks see identical low-precision inputs;
#   a rebuilt input whose low-precision cast flips costs the low format's
#   roundoff, and the affine coupling loses it anyway.
#
# ## Exercises
#
# 1. **Derivation.** Derive the inverse and $\log|\det J|$ of the affine
#    coupling with a *sigmoid* scale, $y_2 = x_2 \odot \sigma(s(x_1)) + t(x_1)$.
#    Can this coupling expand volumes along $x_2$, or only shrink them?
#    (Hint: what values does $\sigma$ take?)
# 2. **Derivation.** Show that a RevNet block with $G = 0$ is a NICE coupling
#    with the halves exchanged, and compute $J_{\text{RevNet}}$ in
#    {eq}`eq-revnet-jacobian` explicitly as a block matrix. Which block makes it
#    non-triangular?
# 3. **Code change.** Write a three-way coupling on $(x_1, x_2, x_3)$:
#    $y_1 = x_1 + F(x_2, x_3)$, $y_2 = x_2 + G(y_1, x_3)$, $y_3 = x_3 + H(y_1, y_2)$.
#    Implement `forward` and `inverse` as a `revlib.ReversibleBlock` and check it
#    with `check_inverse`.
# 4. **Experiment.** Repeat the chain experiment with the `Tanh` of `small_net`
#    replaced by `nn.ReLU()` and the weights multiplied by 3. How does the
#    float32 error at 128 blocks change, and why? (Come back to this after
#    {ref}`ch-ode`.)
# 5. **Experiment.** Build a float64 flow of four affine couplings on 2-D points
#    (alternate which coordinate is $x_1$ with `revlib.HalfSwap`), and check the
#    change-of-variables formula numerically: integrate $p_X$ over a grid and
#    compare with 1.
#
# ## Solutions
#
# Each solution is folded; open it after trying the exercise. Where a solution
# has a number, the folded code cell above it computes and checks it.

# %% tags=["hide-cell", "nbval-ignore-output"]
torch.manual_seed(0)
sig_net = nn.Sequential(
    nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 4)
).double()  # (s, t) for halves of 2


def sigmoid_coupling(x):
    x1, x2 = x.chunk(2, dim=-1)
    s, t = sig_net(x1).chunk(2, dim=-1)
    return torch.cat([x1, x2 * torch.sigmoid(s) + t], -1)


def sigmoid_coupling_inverse(y):
    y1, y2 = y.chunk(2, dim=-1)
    s, t = sig_net(y1).chunk(2, dim=-1)
    return torch.cat([y1, (y2 - t) / torch.sigmoid(s)], -1)


x_sig = torch.randn(4, dtype=torch.float64)
J_sig = torch.autograd.functional.jacobian(sigmoid_coupling, x_sig)
s_sig = sig_net(x_sig[:2]).chunk(2)[0]
logdet_formula = torch.log(torch.sigmoid(s_sig)).sum().item()
logdet_numeric = torch.linalg.slogdet(J_sig)[1].item()
inverse_sig_err = (
    (sigmoid_coupling_inverse(sigmoid_coupling(x_sig)) - x_sig).abs().max().item()
)
print(
    f"log|det J|: from the 4x4 Jacobian {logdet_numeric:+.12f}, "
    f"sum log sigmoid(s) {logdet_formula:+.12f}; "
    f"inverse error below 1e-12: {inverse_sig_err < 1e-12}"
)
assert (
    abs(logdet_numeric - logdet_formula) < 1e-12
    and logdet_formula < 0
    and inverse_sig_err < 1e-12
)

# %% [markdown]
# ```{admonition} Solution 1 (a sigmoid scale)
# :class: dropdown
#
# $y_1 = x_1$ gives $x_1 = y_1$; then $s$ and $t$ are computable from $y_1$ and
# $x_2 = (y_2 - t(y_1)) \oslash \sigma(s(y_1))$, safe because $\sigma > 0$. The
# Jacobian is block lower-triangular with diagonal blocks $I$ and
# $\operatorname{diag}(\sigma(s))$, so $\log\lvert\det J\rvert = \sum_i \log\sigma(s_i)$.
# Every term is negative since $0 < \sigma < 1$: along $x_2$ every coupling
# multiplies lengths by less than one, so a stack of them can only shrink
# volumes. A flow needs to expand as well as contract, which is why Real NVP
# uses $\exp(s)$ (Glow's sigmoid variant adds an offset inside the sigmoid and
# relies on other layers to expand). The folded cell checks the log-determinant
# against a numerical $4 \times 4$ Jacobian and the inverse in float64.
# ```

# %% tags=["hide-cell"]
torch.manual_seed(0)
F_lin, G_lin = nn.Linear(2, 2).double(), nn.Linear(2, 2).double()
F_tanh = lambda v: torch.tanh(F_lin(v))  # noqa: E731
G_tanh = lambda v: torch.tanh(G_lin(v))  # noqa: E731


def revnet_map(x):
    y1 = x[:2] + F_tanh(x[2:])
    return torch.cat([y1, x[2:] + G_tanh(y1)])


x_rn = torch.randn(4, dtype=torch.float64)
J_rn = torch.autograd.functional.jacobian(revnet_map, x_rn)
Fp = torch.autograd.functional.jacobian(F_tanh, x_rn[2:])
Gp = torch.autograd.functional.jacobian(G_tanh, revnet_map(x_rn)[:2])
I2 = torch.eye(2, dtype=torch.float64)
J_blocks = torch.cat([torch.cat([I2, Fp], 1), torch.cat([Gp, I2 + Gp @ Fp], 1)], 0)
print(
    "RevNet Jacobian equals [[I, F'], [G', I + G'F']]: "
    f"{torch.allclose(J_rn, J_blocks, atol=1e-14)}; "
    f"det = {torch.linalg.det(J_rn).item():.12f}"
)
assert (
    torch.allclose(J_rn, J_blocks, atol=1e-14)
    and abs(torch.linalg.det(J_rn).item() - 1) < 1e-12
)

# %% [markdown]
# ```{admonition} Solution 2 (RevNet with G = 0, and its Jacobian)
# :class: dropdown
#
# With $G = 0$, $y_1 = x_1 + F(x_2)$ and $y_2 = x_2$: the half $x_2$ passes
# unchanged and the other half gets a function of it added, which is NICE's
# coupling $y_2 = x_2 + m(x_1)$ with the roles of the halves exchanged. In
# general, multiplying the factors of {eq}`eq-revnet-jacobian` gives
# {eq}`eq-revnet-jacobian-full`,
# $J_{\text{RevNet}} = \begin{pmatrix} I & F' \\ G' & I + G'F' \end{pmatrix}$: the
# lower-left block $G'$ (the second update reads the *new* first half) makes it
# non-triangular; with $G' = 0$ it is upper-triangular, as for NICE. The folded
# cell compares the block formula with a numerical Jacobian in float64.
# ```


# %% tags=["hide-cell"]
class ThreeWayCoupling(revlib.ReversibleBlock):
    """y1 = x1 + F(x2, x3), y2 = x2 + G(y1, x3), y3 = x3 + H(y1, y2), on channel
    thirds."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.F, self.G, self.H = (
            nn.Conv2d(2 * channels, channels, 3, padding=1) for _ in range(3)
        )

    def _forward(self, x, run):
        x1, x2, x3 = x.chunk(3, dim=1)
        y1 = x1 + run("F", self.F, torch.cat([x2, x3], 1))
        y2 = x2 + run("G", self.G, torch.cat([y1, x3], 1))
        y3 = x3 + run("H", self.H, torch.cat([y1, y2], 1))
        return torch.cat([y1, y2, y3], 1)

    def _inverse(self, y, run):
        y1, y2, y3 = y.chunk(3, dim=1)
        x3 = y3 - run("H", self.H, torch.cat([y1, y2], 1))
        x2 = y2 - run("G", self.G, torch.cat([y1, x3], 1))
        x1 = y1 - run("F", self.F, torch.cat([x2, x3], 1))
        return torch.cat([x1, x2, x3], 1)


torch.manual_seed(0)
three_way = ThreeWayCoupling(2).double()
x_three = torch.randn(2, 6, 5, 5, dtype=torch.float64)
three_err = check_inverse(three_way, x_three)
print(
    f"three-way coupling: inverse error below 1e-13 in float64: {three_err < 1e-13}"
)
assert three_err < 1e-13

# %% [markdown]
# ```{admonition} Solution 3 (a three-way coupling)
# :class: dropdown
#
# Undo the updates in reverse order, each with quantities already known:
# $x_3 = y_3 - H(y_1, y_2)$, then $x_2 = y_2 - G(y_1, x_3)$, then
# $x_1 = y_1 - F(x_2, x_3)$. The folded cell writes `_forward` and `_inverse`
# once, calling every sub-network through `run(name, fn, x)` as the block
# contract of `revlib.ReversibleBlock` asks (its own inputs concatenated along
# the channels), and `check_inverse` confirms the inverse to float64 rounding.
# Its Jacobian is a product of three triangular factors, so its determinant is 1.
# ```


# %% tags=["hide-cell", "nbval-ignore-output"]
def steep_net(channels: int) -> nn.Sequential:
    """small_net with ReLU instead of tanh and weights multiplied by 3."""
    net = small_net(channels)
    net[1] = nn.ReLU()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3)
    return net


steep_rows = []
for depth in depths[3:]:
    torch.manual_seed(depth)
    steep_chain = revlib.ReversibleSequence(
        [AdditiveCoupling(steep_net(CH), steep_net(CH)) for _ in range(depth)]
    ).float()
    with torch.no_grad():
        steep_out = steep_chain(x_chain.float()).abs().max().item()
    steep_rows.append(
        (
            depth,
            check_inverse(steep_chain, x_chain.float()),
            steep_out,
            chain_errors["float32"][depths.index(depth)],
        )
    )
for depth, err, out, base in steep_rows:
    print(
        f"{depth:4d} blocks: ReLU, weights x 3: error {err:.1e}, "
        f"largest output {out:.1e}   (tanh: error {base:.1e})"
    )
finite = [r for r in steep_rows if math.isfinite(r[1])]
assert all(err > 10 * base for _, err, _, base in finite)
assert not math.isfinite(
    steep_rows[-1][2]
)  # at 128 blocks the forward overflows float32
glue("steep_last_finite_depth", finite[-1][0], display=False)
glue("steep_last_finite_err", finite[-1][1], display=False)
glue("steep_last_finite_out", finite[-1][2], display=False)
glue(
    "steep_first_overflow",
    next(r[0] for r in steep_rows if not math.isfinite(r[2])),
    display=False,
)
glue(
    "steep_first_nan",
    next(r[0] for r in steep_rows if not math.isfinite(r[1])),
    display=False,
)

# %% [markdown]
# ```{admonition} Solution 4 (ReLU and larger weights)
# :class: dropdown
#
# At 128 blocks there is nothing left to reconstruct: in the folded cell the
# reconstruction is already NaN at {glue:text}`steep_first_nan` blocks (an
# overflow inside the inverse), and at {glue:text}`steep_first_overflow` the
# forward itself overflows float32.
# At {glue:text}`steep_last_finite_depth` blocks the activations reach
# {glue:text}`steep_last_finite_out:.1e` and the reconstruction error is
# {glue:text}`steep_last_finite_err:.1e`, orders of magnitude above the tanh
# chain's at every depth. Two things compound. The activations grow, since ReLU does not saturate and each
# block adds a term three times as large, and rounding errors are relative to the
# activations. And each inverse step $x_1 = y_1 - F(x_2)$ passes an error in
# $x_2$ on multiplied by up to the Lipschitz constant of $F$, now about nine times
# larger; over 128 blocks these factors multiply. {ref}`sec-reversible-stability`
# makes this precise: the reconstruction amplifies errors as fast as the forward
# contracts perturbations, and a block whose Jacobian has large eigenvalues of both
# signs of real part does both.
# ```

# %% tags=["hide-cell"]
torch.manual_seed(0)


def flow_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 2))


flow = [
    AffineCoupling(flow_net()),
    revlib.HalfSwap(),
    AffineCoupling(flow_net()),
    revlib.HalfSwap(),
    AffineCoupling(flow_net()),
    revlib.HalfSwap(),
    AffineCoupling(flow_net()),
]
flow = [b.double() for b in flow]
side = torch.linspace(-10, 10, 801, dtype=torch.float64)
grid_points = torch.cartesian_prod(side, side)
with torch.no_grad():
    z, log_det = grid_points, torch.zeros(len(grid_points), dtype=torch.float64)
    for b in flow:
        if isinstance(b, AffineCoupling):
            z, ld = b.forward_and_log_det(z)
            log_det += ld
        else:
            z = b(z)
    log_p = (
        -0.5 * (z**2).sum(1) - math.log(2 * math.pi) + log_det
    )  # p_X(x) = N(f(x)) |det J_f(x)|
total = (log_p.exp().sum() * (side[1] - side[0]) ** 2).item()
print(f"integral of p_X over [-10, 10]^2 on an 801 x 801 grid: {total:.6f}")
assert abs(total - 1) < 1e-3
glue("flow_integral", total, display=False)

# %% [markdown]
# ```{admonition} Solution 5 (change of variables, checked)
# :class: dropdown
#
# With $z = f(x)$ and $z \sim \mathcal N(0, I)$, the density of $x$ is
# $p_X(x) = \mathcal N(f(x); 0, I)\,\lvert\det J_f(x)\rvert$, and the
# log-determinant of the flow is the sum of its couplings' (`HalfSwap` is a
# permutation, $\lvert\det\rvert = 1$). The folded cell evaluates $p_X$ on an
# $801 \times 801$ grid over $[-10, 10]^2$ and sums it: {glue:text}`flow_integral:.4f`,
# 1 up to the grid's quadrature error and the mass outside the square. Leaving
# out the log-determinant, the same sum is no longer 1: try it.
# ```
