# %% [markdown]
# (ch-ode)=
# # ResNets as ODEs, and stability
#
# A residual block adds a correction to its input: $Y_{j+1} = Y_j + F(Y_j, \theta_j)$.
# Write the correction as $h$ times a function and the block becomes one step of
# the **forward Euler** method for an ordinary differential equation (ODE),
#
# $$
# Y_{j+1} = Y_j + h\, f(Y_j, \theta_j)
# \quad\longleftrightarrow\quad
# \dot Y(t) = f(Y(t), \theta(t)), \qquad Y(0) = Y_0 ,
# $$ (eq-euler-ode)
#
# with layer $j$ at time $t_j = jh$ and depth $N$ covering the time interval
# $[0, T]$, $T = Nh$. {cite:t}`haber2017stable` and {cite:t}`chang2018reversible`
# use this reading (see also {cite:t}`e2017proposal`) to ask a question that depth alone does not answer: **is the forward
# propagation stable?** A small change of the input (noise, a different image of
# the same class) should cause a small change of the output, not one that grows
# without bound as the network gets deeper; nor should every input be squeezed
# onto the same output, which would make the network forget what it saw.
#
# This chapter makes that question computable. We check the Euler reading
# numerically, reproduce Haber and Ruthotto's three-point toy example, compute the
# eigenvalues of the Jacobian of three kinds of layers (a plain residual layer, an
# antisymmetric layer and a Hamiltonian block), prove that the Hamiltonian block's
# eigenvalues lie on the imaginary axis, and measure how a perturbation grows
# with depth. The tools are in `revlib.core.stability`; the blocks in `revlib.core.ode`
# ({ref}`ch-hamiltonian` builds networks from them). The numerical analysis is
# standard {cite:p}`ascher1998computer,hairer2006geometric`. The last section
# places reversible networks among the other ways of getting a network's input
# back from its output: the adjoint method of Neural ODEs, reverse-accurate
# integrators, and residual networks made invertible by a Lipschitz constraint.

# %%
import math
import statistics
from itertools import pairwise

import matplotlib.pyplot as plt
import torch
from torch import nn

from revlib import AdditiveCoupling, ReversibleSequence, stability
from revlib.core.ode import AntisymmetricSigma, HamiltonianBlock
from revlib.harness.figures import plot_series, plot_stability_regions, show_table
from revlib.harness.notebook import glue
from revlib.models.revnet import basic_branch

torch.set_num_threads(1)  # float64 results identical from run to run
_ = torch.manual_seed(0)
f64 = dict(dtype=torch.float64)

# %% [markdown]
# ## The forward Euler view, checked
#
# If a residual network with $N$ layers and step $h = T/N$ is forward Euler for
# $\dot Y = f(Y)$, then, as the network deepens with $T$ fixed, its output must
# converge to the ODE's solution $Y(T)$, and the error must halve each time $N$
# doubles (Euler's method has order 1). Take the 2-D ODE
# $\dot Y = \tanh(K Y)$ with a fixed $K$ (the same weights in every layer: the
# "time-invariant" network), compute $Y(2)$ accurately with 4,000 steps of the
# classical fourth-order Runge-Kutta method, and compare.

# %%
K_demo = torch.tensor([[0.5, -1.0], [1.0, 0.3]], **f64)
f_demo = lambda y: torch.tanh(y @ K_demo.T)  # noqa: E731
y_start = torch.tensor([[0.6, -0.2]], **f64)
T = 2.0


def rk4(f, y, T, n):
    h = T / n
    for _ in range(n):
        k1 = f(y)
        k2 = f(y + h / 2 * k1)
        k3 = f(y + h / 2 * k2)
        k4 = f(y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def residual_network(f, y, T, n):
    """n residual blocks Y <- Y + h f(Y) with h = T / n: forward Euler."""
    h = T / n
    for _ in range(n):
        y = y + h * f(y)
    return y


exact = rk4(f_demo, y_start, T, 4000)
depths = [10, 20, 40, 80, 160]
euler_errors = [
    (residual_network(f_demo, y_start, T, n) - exact).norm().item() for n in depths
]
ratios = [a / b for a, b in pairwise(euler_errors)]
for n, err in zip(depths, euler_errors, strict=True):
    print(
        f"{n:4d} layers (h = {T / n:.4f}): distance from the ODE solution {err:.3e}"
    )
print("error ratios when the depth doubles:", ", ".join(f"{r:.3f}" for r in ratios))
assert all(abs(r - 2) < 0.02 for r in ratios)  # first order: the error halves
glue("euler_ratio_min", min(ratios), display=False)
glue("euler_ratio_max", max(ratios), display=False)

# %% [markdown]
# Each doubling of the depth halves the distance to the ODE's solution (the
# ratios lie between {glue:text}`euler_ratio_min:.3f` and
# {glue:text}`euler_ratio_max:.3f`): the residual network is forward Euler, and a
# deeper network with smaller $h$ is a finer discretisation of the same
# continuous map. Properties of the ODE (is it stable?) therefore become
# properties of very deep networks.
#
# ## Stability, and what the Jacobian says
#
# Perturb the initial state by $\delta Y(0)$. To first order the perturbation
# obeys the linearised equation
#
# $$
# \dot{\delta Y} = J(t)\, \delta Y, \qquad J(t) = \frac{\partial f}{\partial Y}\big(Y(t)\big),
# $$
#
# and its size behaves like $\lVert \delta Y(t) \rVert \approx e^{\lambda t}
# \lVert \delta Y(0)\rVert$, with $\lambda$ the **Lyapunov exponent**. If $J$ were
# constant, $\lambda$ would be the largest real part of its eigenvalues. Haber and
# Ruthotto's criterion is therefore
#
# $$
# \max_i \operatorname{Re} \lambda_i\big(J(t)\big) \le 0 \quad \text{for all } t ,
# $$ (eq-stability-criterion)
#
# with real parts close to 0 for well-posed learning: positive real parts make
# perturbations explode (an unstable network), strongly negative ones make them
# vanish (the network maps different inputs to the same output, and gradients
# vanish too). For $f(Y) = \sigma(KY + b)$ the Jacobian is
# $J = \operatorname{diag}(\sigma'(KY + b))\, K$, so the eigenvalues of $K$ itself
# matter most. (The criterion looks at a frozen $J$: it is a guide for a slowly
# varying state, not a proof for every trajectory; the last section shows where it
# stops being exact.)
#
# ## Haber and Ruthotto's toy: three points, three matrices
#
# Their example propagates three points, $y_1 = (0.1, 0.1)$, $y_2 = -y_1$ and
# $y_3 = (0, 0.5)$, through 10 layers of $Y_{j+1} = Y_j + h \tanh(K Y_j)$ with
# $h = 0.1$ and $b = 0$, for three matrices:
#
# $$
# K_+ = \begin{pmatrix} 2 & -2 \\ 0 & 2 \end{pmatrix},\quad
# K_- = \begin{pmatrix} -2 & 0 \\ 2 & -2 \end{pmatrix},\quad
# K_0 = \begin{pmatrix} 0 & -1 \\ 1 & 0 \end{pmatrix}.
# $$
#
# $K_+$ has the double eigenvalue $2$, $K_-$ the double eigenvalue $-2$, $K_0$ the
# pair $\pm i$. At the origin $\tanh' = 1$, so these are the Jacobian's
# eigenvalues there.

# %%
points = torch.tensor([[0.1, 0.1], [-0.1, -0.1], [0.0, 0.5]], **f64)
toy_K = {
    "K+": torch.tensor([[2.0, -2.0], [0.0, 2.0]], **f64),
    "K-": torch.tensor([[-2.0, 0.0], [2.0, -2.0]], **f64),
    "K0": torch.tensor([[0.0, -1.0], [1.0, 0.0]], **f64),
}
h_toy, layers_toy = 0.1, 10


def toy_layer(K):
    return lambda y: y + h_toy * torch.tanh(y @ K.T)


trajectories, toy_rows = {}, []
for name, K in toy_K.items():
    ys = [points]
    for _ in range(layers_toy):
        ys.append(toy_layer(K)(ys[-1]))
    trajectories[name] = torch.stack(ys)  # (layers + 1, 3 points, 2)
    eig = torch.linalg.eigvals(K)
    spread = torch.pdist(ys[-1]).sum() / torch.pdist(points).sum()
    lyap = [
        stability.lyapunov_exponent(
            toy_layer(K),
            points[i : i + 1],
            depth=layers_toy,
            h=h_toy,
            direction=torch.tensor([[1.0, 0.0]], **f64),
        )
        for i in range(3)
    ]
    toy_rows.append(
        (name, eig, ys[-1].norm(dim=1) / points.norm(dim=1), spread, lyap)
    )

show_table(
    [
        "K",
        "eigenvalues of K",
        "norm ratio of y1, y2, y3 after 10 layers",
        "spread ratio",
        "Lyapunov exponents at y1, y2, y3",
    ],
    [
        [
            name,
            ", ".join(f"{z.real:+.0f}{z.imag:+.0f}i" for z in eig),
            ", ".join(f"{r:.3f}" for r in norm_ratio),
            f"{spread:.3f}",
            ", ".join(f"{v:+.3f}" for v in lyap),
        ]
        for name, eig, norm_ratio, spread, lyap in toy_rows
    ],
)

(
    (_, _, norm_p, spread_p, lyap_p),
    (_, _, norm_m, spread_m, lyap_m),
    (_, _, norm_0, spread_0, lyap_0),
) = toy_rows
assert spread_p > 3 and min(lyap_p) > 0.1  # K+: the points fly apart
assert spread_m < 0.2 and max(lyap_m) < -1.0  # K-: they collapse onto the origin
assert abs(spread_0 - 1) < 0.06 and all(
    0 < v < 0.1 for v in lyap_0
)  # K0: rotation, sizes kept
# Euler on a rotation: |1 + h i| = sqrt(1 + h^2) per step, exponent
# log(1 + h^2) / (2h).
lyap_predicted = math.log(1 + h_toy**2) / (2 * h_toy)
lyap_at_rest = stability.lyapunov_exponent(
    toy_layer(toy_K["K0"]),
    1e-8 * points[:1],
    depth=layers_toy,
    h=h_toy,
    direction=torch.tensor([[1.0, 0.0]], **f64),
)
assert (
    abs(lyap_at_rest - lyap_predicted) < 1e-9
)  # at rest the step is a scaled rotation: exact
assert all(
    v > lyap_predicted for v in lyap_0
)  # away from rest: more, through non-normal steps
glue("toy_lyap_predicted", lyap_predicted, display=False)
glue(
    "toy_lyap_at_rest", round(lyap_at_rest, 6), display=False
)  # rounded: the last digits vary by CPU
glue("toy_lyap_zero_min", min(lyap_0), display=False)
glue("toy_spread_plus", float(spread_p), display=False)
glue("toy_spread_minus", float(spread_m), display=False)
glue("toy_spread_zero", float(spread_0), display=False)
glue("toy_lyap_zero_max", max(lyap_0), display=False)

# %%
grid = torch.linspace(-1.2, 1.2, 17, **f64)
gx, gy = torch.meshgrid(grid, grid, indexing="xy")
fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
for ax, (name, K) in zip(axes, toy_K.items(), strict=True):
    field = torch.tanh(torch.stack([gx, gy], -1) @ K.T)
    ax.quiver(gx, gy, field[..., 0], field[..., 1], color="0.75", angles="xy")
    for i, color in enumerate(["tab:blue", "tab:orange", "tab:green"]):
        path = trajectories[name][:, i]
        ax.plot(path[:, 0], path[:, 1], "-", color=color, lw=2)
        ax.plot(path[0, 0], path[0, 1], "o", color=color, ms=5)
        ax.plot(path[-1, 0], path[-1, 1], "s", color=color, ms=5)
    ax.set_title(f"{name}: 10 layers, h = 0.1")
    ax.set_xlim(-1.2, 1.2)
    ax.set_ylim(-1.2, 1.2)
    ax.set_aspect("equal")
axes[0].set_ylabel("second coordinate")
for ax in axes:
    ax.set_xlabel("first coordinate")
fig.suptitle(
    "Phase plane: the field tanh(K y) (grey); "
    "each point moves from its circle to its square"
)
fig.tight_layout(rect=(0, 0, 1, 0.95))
plt.show()

# %% [markdown]
# With $K_+$ the three points fly apart: the sum of their pairwise distances grows
# by a factor {glue:text}`toy_spread_plus:.2f` in ten layers, and every Lyapunov
# exponent is positive. With $K_-$ they collapse towards the origin (factor
# {glue:text}`toy_spread_minus:.3f`): the output no longer tells the inputs
# apart. With $K_0$ the points rotate and their spread is kept (factor
# {glue:text}`toy_spread_zero:.3f`). Its Lyapunov exponents are slightly above 0,
# an artefact of the discretisation that the next sections meet again: forward
# Euler applied to the rotation $\dot y = K_0 y$ multiplies lengths by
# $\lvert 1 + ih \rvert = \sqrt{1 + h^2}$ per step, which predicts the exponent
# $\log(1 + h^2)/(2h) =$ {glue:text}`toy_lyap_predicted:.4f`. Started at rest
# (the points scaled by $10^{-8}$) the measured exponent is
# {glue:text}`toy_lyap_at_rest:.4f`, the prediction. At the three points it is
# larger, from {glue:text}`toy_lyap_zero_min:.4f` to
# {glue:text}`toy_lyap_zero_max:.4f`. There the Jacobian is
# $\operatorname{diag}(\tanh')K_0$ with unequal diagonal entries: it is no longer
# a normal matrix, nor is the step $I + h\operatorname{diag}(\tanh')K_0$, and a
# product of non-normal steps can stretch a given direction by more than its
# eigenvalues say (here although those eigenvalues are even smaller,
# $\lvert 1 + h\lambda\rvert^2 = 1 + h^2 \tanh'_1 \tanh'_2$). The next cell shows
# it: along each trajectory it compares the largest singular value
# $\sigma_{\max}(I + hDK_0)$ of every step's Jacobian, the most that step can
# stretch any direction, with its spectral radius $\max\lvert 1 + h\lambda\rvert$,
# and the norm of the product of the ten steps with the product of their spectral
# radii.


# %% tags=["nbval-ignore-output"]
def step_jacobian(K, y):
    """Jacobian of y -> y + h tanh(K y) at y: I + h diag(tanh'(K y)) K."""
    d = 1 - torch.tanh(K @ y) ** 2
    return torch.eye(2, **f64) + h_toy * torch.diag(d) @ K


normality_rows = []
starts = {"y1": 0, "y2": 1, "y3": 2}
for label, i in starts.items():
    steps_J = [
        step_jacobian(toy_K["K0"], trajectories["K0"][j, i])
        for j in range(layers_toy)
    ]
    sigma = [torch.linalg.matrix_norm(M, ord=2).item() for M in steps_J]
    radius = [torch.linalg.eigvals(M).abs().max().item() for M in steps_J]
    product = torch.eye(2, **f64)
    for M in steps_J:
        product = M @ product
    normality_rows.append(
        (
            label,
            max(radius),
            max(sigma),
            math.prod(radius),
            torch.linalg.matrix_norm(product, ord=2).item(),
        )
    )
rest_J = step_jacobian(toy_K["K0"], torch.zeros(2, **f64))
rest_gap = (
    torch.linalg.matrix_norm(rest_J, ord=2).item()
    - torch.linalg.eigvals(rest_J).abs().max().item()
)
show_table(
    [
        "start",
        "max over steps of abs(1 + h lambda)",
        "max over steps of sigma_max(I + h D K0)",
        "product of abs(1 + h lambda) over 10 steps",
        "sigma_max of the product of the 10 steps",
    ],
    [
        [lab, f"{r:.5f}", f"{sg:.5f}", f"{pr:.5f}", f"{pn:.5f}"]
        for lab, r, sg, pr, pn in normality_rows
    ],
)
print(f"at rest (D = I, a normal step): sigma_max - |1 + h lambda| = {rest_gap:.1e}")
assert abs(rest_gap) < 1e-12
assert all(
    sg > r + 1e-3 and pn > pr for _, r, sg, pr, pn in normality_rows
)  # non-normal: stretches beyond |1 + h lambda|
glue("nn_sigma_max", max(row[2] for row in normality_rows), display=False)
glue("nn_radius_max", max(row[1] for row in normality_rows), display=False)

# %% [markdown]
# At rest $D = I$ and the step $I + hK_0$ is normal: its largest singular value
# equals $\lvert 1 + ih \rvert$. Along the three trajectories every step stretches
# some direction by more than its eigenvalues allow (the largest singular value
# reaches {glue:text}`nn_sigma_max:.4f`, the largest $\lvert 1 + h\lambda\rvert$
# only {glue:text}`nn_radius_max:.4f`), and the ten-step products stretch by more
# than the products of the spectral radii. Over ten steps this transient growth
# dominates.
#
# ## Eigenvalues of three layers
#
# Now three layers acting on small convolutional feature maps (8 channels,
# 5 x 5 pixels, so the state has 200 entries and the Jacobian is 200 x 200),
# each at a random state with random biases, all with $\sigma = \tanh$:
#
# * a **plain residual layer**, $f(Y) = \sigma(KY + b)$ with a random 3 x 3
#   convolution $K$;
# * {cite:t}`haber2017stable`'s **antisymmetric layer**, $f(Y) = \sigma((K - K^\top)Y + b)$,
#   where $K^\top$ is the transposed convolution with the same weights
#   (`revlib.core.ode.AntisymmetricSigma`);
# * {cite:t}`chang2018reversible`'s **two-layer Hamiltonian block** on the channel halves
#   $Y$ and $Z$: $f(Y, Z) = \big(K_1^\top \sigma(K_1 Z + b_1),\; -K_2^\top \sigma(K_2 Y + b_2)\big)$
#   (`revlib.core.ode.HamiltonianBlock.rhs`).
#
# `revlib.core.stability.eigenvalues` forms the Jacobian with
# `torch.autograd.functional.jacobian` and returns its eigenvalues.

# %% tags=["nbval-ignore-output"]
C, size = 8, 5


def random_biases(module: nn.Module, std: float = 0.5) -> nn.Module:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, std)
    return module


plain_conv = random_biases(nn.Conv2d(C, C, 3, padding=1).double())
nn.init.normal_(plain_conv.weight, std=math.sqrt(2 / (9 * C)))
rhs = {
    "plain residual layer": lambda y: torch.tanh(plain_conv(y)),
    "antisymmetric layer": random_biases(
        AntisymmetricSigma(C, activation="tanh").double()
    ),
    "Hamiltonian block": random_biases(
        HamiltonianBlock(C, activation="tanh").double()
    ).rhs,
}
state = torch.randn(1, C, size, size, **f64)
spectra = {name: stability.eigenvalues(fn, state) for name, fn in rhs.items()}
spectral_radius = {name: ev.abs().max().item() for name, ev in spectra.items()}
for name, ev in spectra.items():
    print(
        f"{name:22s} {ev.numel()} eigenvalues, "
        f"largest |lambda| {spectral_radius[name]:.3f}, "
        f"largest real part {ev.real.max().item():+.3e}, "
        f"largest |real part| {ev.real.abs().max().item():.3e}"
    )

ham_max_re = spectra["Hamiltonian block"].real.abs().max().item()
anti_max_re = spectra["antisymmetric layer"].real.abs().max().item()
plain_max_re = spectra["plain residual layer"].real.max().item()
assert plain_max_re > 0.2  # unstable directions
assert (
    anti_max_re < 1e-13 * spectral_radius["antisymmetric layer"]
)  # on the imaginary axis
assert (
    ham_max_re < 1e-13 * spectral_radius["Hamiltonian block"]
)  # on the imaginary axis
glue("plain_max_re", plain_max_re, display=False)
glue("anti_max_re", anti_max_re, display=False)
glue("ham_max_re", ham_max_re, display=False)
glue("ham_rho", spectral_radius["Hamiltonian block"], display=False)

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), sharey=True)
for ax, (name, ev) in zip(axes, spectra.items(), strict=True):
    ax.axvline(0, color="0.6", lw=0.8)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.plot(ev.real, ev.imag, ".", ms=5)
    ax.set_title(name)
    ax.set_xlabel("real part")
    ax.set_xlim(-2.5, 2.5)
axes[0].set_ylabel("imaginary part")
fig.suptitle(
    "Eigenvalues of the Jacobian of each layer's right-hand side (200 x 200, float64)"
)
fig.tight_layout()
plt.show()

# %% [markdown]
# The plain layer's eigenvalues scatter on both sides of the imaginary axis (the
# largest real part is {glue:text}`plain_max_re:.3f`): some directions grow. The
# antisymmetric layer's and the Hamiltonian block's lie on the imaginary axis:
# their largest absolute real parts, {glue:text}`anti_max_re:.1e` and
# {glue:text}`ham_max_re:.1e` (for a spectral radius of
# {glue:text}`ham_rho:.2f`), are float64 round-off.
#
# ## Why the Hamiltonian block's eigenvalues are purely imaginary
#
# Write $u = K_1 Z + b_1$, $v = K_2 Y + b_2$ and
# $D_1 = \operatorname{diag}(\sigma'(u))$, $D_2 = \operatorname{diag}(\sigma'(v))$.
# These are diagonal with nonnegative entries, since $\sigma$ is nondecreasing
# ($\tanh' > 0$, $\mathrm{ReLU}' \in \{0, 1\}$). Differentiating
# $f(Y, Z) = \big(K_1^\top \sigma(u),\, -K_2^\top \sigma(v)\big)$ gives
#
# $$
# J = \begin{pmatrix} 0 & A \\ -B & 0 \end{pmatrix},
# \qquad A = K_1^\top D_1 K_1, \qquad B = K_2^\top D_2 K_2 ,
# $$ (eq-hamiltonian-jacobian)
#
# (the first block row does not depend on $Y$, the second not on $Z$).
# $A$ and $B$ are **symmetric positive semidefinite**: $x^\top A x = (K_1 x)^\top D_1
# (K_1 x) \ge 0$. Two facts finish the proof.
#
# 1. *The product of two symmetric positive semidefinite matrices has real,
#    nonnegative eigenvalues.* The nonzero eigenvalues of $PQ$ and $QP$ coincide
#    (if $PQv = \mu v$ with $\mu \ne 0$, then $Qv \ne 0$ and $QP(Qv) = \mu\, Qv$).
#    With $P = A^{1/2}$ and $Q = A^{1/2}B$, the nonzero eigenvalues of $AB$ are those
#    of $A^{1/2} B A^{1/2}$, which is symmetric and positive semidefinite, so real
#    and $\ge 0$.
# 2. *Squaring $J$ separates the halves:*
#    $J^2 = \begin{pmatrix} -AB & 0 \\ 0 & -BA \end{pmatrix}$. If $Jw = \lambda w$
#    with $w \ne 0$, then $J^2 w = \lambda^2 w$, so $\lambda^2$ is an eigenvalue of
#    $-AB$ or of $-BA$, hence real and $\le 0$ by fact 1.
#
# So $\lambda^2 \le 0$, that is $\lambda = \pm i\sqrt{\mu}$ with $\mu \ge 0$: every
# eigenvalue lies on the imaginary axis. The same argument covers Haber and
# Ruthotto's one-layer Hamiltonian system $\dot Y = \sigma(KZ + b)$,
# $\dot Z = -\sigma(K^\top Y + b)$, whose Jacobian has $A = D_1 K$ and
# $B = D_2 K^\top$; there $AB = D_1 (K D_2 K^\top)$ is again a product of two
# symmetric positive semidefinite matrices. The antisymmetric layer is the same
# idea in one piece: $J = D(K - K^\top)$ has the eigenvalues of
# $D^{1/2}(K - K^\top)D^{1/2}$, an antisymmetric matrix.
#
# The proof does not need $D_1, D_2$ to be invertible, and holds for ReLU, the
# activation Chang et al. use. There one numerical subtlety appears: ReLU sets
# some entries of $D$ to 0, $A$ and $B$ become singular, and the eigenvalue 0 of
# $J$ can be *defective*: a Jordan block, e.g. for a $z$ with $Az \ne 0$ but
# $BAz = 0$, $J[0; z] = [Az; 0] \ne 0$ while $J[Az; 0] = [0; -BAz] = 0$. An eigensolver resolves a $2 \times 2$ Jordan
# block only to about $\sqrt{\varepsilon}\,\lVert J\rVert \approx 10^{-8}\lVert J \rVert$,
# so the computed zero eigenvalues get spurious real parts of that size, while
# the eigenvalues away from 0 stay on the axis to round-off:

# %% tags=["nbval-ignore-output"]
relu_block = random_biases(HamiltonianBlock(C, activation="relu").double())
ev_relu = stability.eigenvalues(relu_block.rhs, state)
rho_relu = ev_relu.abs().max().item()
away = ev_relu[ev_relu.abs() > 1e-6 * rho_relu]
near_zero = ev_relu[ev_relu.abs() <= 1e-6 * rho_relu]
relu_max_re = ev_relu.real.abs().max().item()
relu_max_re_away = away.real.abs().max().item()
print(
    f"ReLU Hamiltonian block: {away.numel()} eigenvalues away from 0, "
    f"largest |real part| {relu_max_re_away:.1e}"
)
print(
    f"{near_zero.numel()} eigenvalues within 1e-6 * rho of 0, "
    f"largest |real part| {relu_max_re:.1e} "
    f"(rho = {rho_relu:.2f}, "
    f"sqrt(eps) * rho = {math.sqrt(torch.finfo(torch.float64).eps) * rho_relu:.1e})"
)
assert relu_max_re_away < 1e-12 * rho_relu
assert relu_max_re < 1e-6 * rho_relu
glue("relu_max_re", relu_max_re, display=False)
glue("relu_max_re_away", relu_max_re_away, display=False)

# %% [markdown]
# With ReLU the eigenvalues away from 0 have real parts of at most
# {glue:text}`relu_max_re_away:.1e`; the largest over all eigenvalues,
# {glue:text}`relu_max_re:.1e`, comes from the defective zero eigenvalue and is
# the eigensolver's $\sqrt{\varepsilon}$ resolution, not a property of the block.
#
# ## How a perturbation grows with depth
#
# Eigenvalues of the ODE's Jacobian are half the story; the other half is the
# integrator. Apply each layer 300 times with $h = 0.1$ (the same weights in every
# layer, $T = 30$) and follow a small perturbation with
# `revlib.core.stability.perturbation_growth`, which propagates it exactly to first
# order with forward-mode differentiation. We start at rest ($Y = 0$, biases 0),
# where $\tanh' = 1$ and the frozen-Jacobian analysis is exact:
#
# * the plain layer and the antisymmetric layer are stepped with forward Euler,
#   $Y \leftarrow Y + h f(Y)$, whose step matrix $I + hJ$ has eigenvalues
#   $1 + h\lambda_i$; a perturbation grows like $e^{\lambda t}$ with rate
#   $\max_i \log\lvert 1 + h\lambda_i\rvert / h$. For imaginary
#   $\lambda = i\omega$ that is $\log(1 + h^2\omega^2)/(2h) > 0$: **forward Euler is
#   unstable on the imaginary axis**, however stable the ODE;
# * the Hamiltonian block is stepped with the integrator that the block *is*:
#   $Y' = Y + hAZ$ with the old $Z$, then $Z' = Z - hBY'$ with the new $Y$. This is
#   the **symplectic Euler** method; read with $Y$ and $Z$ on grids staggered by
#   half a step it is the Störmer–Verlet (leapfrog) scheme
#   {cite:p}`hairer2006geometric`, which is why {cite:t}`chang2018reversible`, and
#   this book, call it "Verlet". Its step matrix is symplectic, and for
#   $h\,\omega < 2$ all its eigenvalues lie on the unit circle: perturbations
#   neither grow nor shrink on average.
#
# Why $h\omega < 2$: linearise the block at rest, $\dot Y = A Z$, $\dot Z = -B Y$
# with $A$, $B$ as in {eq}`eq-hamiltonian-jacobian`. One (symplectic Euler, "Verlet") step is
# $Y' = Y + hAZ$, $Z' = Z - hBY'$. Take an eigenvector $v$ of $BA$ with
# eigenvalue $\omega^2$ (real and $\ge 0$ by fact 1 above) and restrict to states
# $Y = \alpha\, Av$, $Z = \beta\, v$ (assuming $Av \neq 0$). Since
# $BAv = \omega^2 v$, the step maps $(\alpha, \beta)$ by the $2 \times 2$ matrix
#
# $$
# M_\omega = \begin{pmatrix} 1 & h \\ -h\omega^2 & 1 - h^2\omega^2 \end{pmatrix},
# \qquad \det M_\omega = 1, \qquad \operatorname{tr} M_\omega = 2 - h^2\omega^2 .
# $$ (eq-verlet-mode)
#
# Its eigenvalues solve $\mu^2 - (2 - h^2\omega^2)\mu + 1 = 0$ and multiply to 1.
# If $\lvert 2 - h^2\omega^2\rvert < 2$, that is $0 < h\omega < 2$, they are
# complex conjugates with $\lvert\mu\rvert^2 = \mu\bar\mu = 1$: on the unit circle.
# If $h\omega > 2$, the trace is below $-2$, both roots are real and negative,
# and one has $\lvert\mu\rvert > 1$: the step amplifies. Forward Euler has no such
# interval: its step $1 + h\lambda$ stays in the unit disk only for $h\lambda$ in
# the disk $\lvert 1 + h\lambda \rvert \le 1$, which touches the imaginary axis
# only at 0.

# %% tags=["nbval-ignore-output"]
steps, h_layer = 300, 0.1
linear_plain = nn.Conv2d(C, C, 3, padding=1, bias=False).double()
nn.init.normal_(linear_plain.weight, std=math.sqrt(2 / (9 * C)))
linear_anti = AntisymmetricSigma(C, activation="tanh", bias=False).double()
linear_ham = HamiltonianBlock(C, h=h_layer, activation="tanh", bias=False).double()
at_rest = torch.zeros(1, C, 4, 4, **f64)
layer_maps = {
    "plain residual layer (Euler)": lambda y: (
        y + h_layer * torch.tanh(linear_plain(y))
    ),
    "antisymmetric layer (Euler)": lambda y: y + h_layer * linear_anti(y),
    "Hamiltonian block (Verlet)": linear_ham,
}
layer_rhs = {
    "plain residual layer (Euler)": lambda y: torch.tanh(linear_plain(y)),
    "antisymmetric layer (Euler)": linear_anti,
    "Hamiltonian block (Verlet)": linear_ham.rhs,
}
direction = torch.randn(
    at_rest.shape, generator=torch.Generator().manual_seed(1), **f64
)
growth, rate, predicted, step_radius = {}, {}, {}, {}
for name, layer in layer_maps.items():
    growth[name] = stability.perturbation_growth(
        layer, at_rest, depth=steps, direction=direction
    )
    rate[name] = math.log(growth[name][-1]) / (steps * h_layer)
    step_radius[name] = (
        stability.eigenvalues(layer, at_rest).abs().max().item()
    )  # the whole step's Jacobian
    line = (
        f"{name:30s} growth after {steps} layers {growth[name][-1]:9.3e}, "
        f"empirical exponent {rate[name]:+.3f}, "
        f"spectral radius of the step {step_radius[name]:.12f}"
    )
    if "Euler" in name:
        ev = stability.eigenvalues(layer_rhs[name], at_rest)
        predicted[name] = (
            max(math.log(abs(1 + h_layer * z.item())) for z in ev) / h_layer
        )
        line += f", Euler rate from the eigenvalues {predicted[name]:+.3f}"
    print(line)

plain_key, anti_key, ham_key = layer_maps
assert growth[plain_key][-1] > 1e10 and growth[anti_key][-1] > 1e3
assert abs(rate[plain_key] - predicted[plain_key]) < 0.1 * predicted[plain_key]
assert abs(rate[anti_key] - predicted[anti_key]) < 0.25 * predicted[anti_key]
assert abs(step_radius[ham_key] - 1) < 1e-10  # Verlet: eigenvalues on the unit circle
assert (
    growth[ham_key].max() < 5
)  # bounded: its exponent log(growth) / T tends to 0 as T grows
glue("growth_plain", growth[plain_key][-1].item(), display=False)
glue("growth_anti", growth[anti_key][-1].item(), display=False)
glue("growth_ham_max", growth[ham_key].max().item(), display=False)
glue("rate_anti", rate[anti_key], display=False)
glue("pred_anti", predicted[anti_key], display=False)
glue("ham_step_radius_error", abs(step_radius[ham_key] - 1), display=False)

# %%
plot_series(
    range(steps + 1),
    {name: g for name, g in growth.items()},
    xlabel="layer j (time t = 0.1 j)",
    ylabel="|dY_j| / |dY_0|",
    logy=True,
    title="Growth of a perturbation of the rest state with depth",
)
plt.show()

# %% [markdown]
# After 300 layers the plain layer has amplified the perturbation by a factor
# {glue:text}`growth_plain:.1e` and the antisymmetric layer, stepped with forward
# Euler, by {glue:text}`growth_anti:.1e`: its empirical exponent
# {glue:text}`rate_anti:.3f` approaches Euler's rate for the fastest mode,
# $\log(1 + h^2\omega^2)/(2h) =$ {glue:text}`pred_anti:.3f` (after finitely many
# layers the slower modes of the random starting direction still weigh in). This
# is an instability of the integrator, not of the ODE.
# The Hamiltonian block never amplifies it by more than
# {glue:text}`growth_ham_max:.2f`, and the spectral radius of its step's Jacobian
# is 1 to within {glue:text}`ham_step_radius_error:.0e`. (Haber and Ruthotto
# therefore pair the antisymmetric layer with a small damping $-\gamma I$, or a
# stable integrator; {cite:t}`chang2018reversible`'s Midpoint and Leapfrog
# networks in {ref}`ch-hamiltonian` are such integrators.)
#
# (sec-stability-regions)=
# ### Stability regions
#
# All of this fits in one picture. For the linear test equation
# $\dot y = \lambda y$ a one-step method multiplies $y$ by a factor $R(h\lambda)$
# per step, and the method is stable where $\lvert R(h\lambda) \rvert \le 1$.
# Forward Euler has $R(z) = 1 + z$: its region is the disk of radius 1 around
# $-1$. Verlet on an oscillation $\lambda = \pm i\omega$ is stable for
# $h\omega < 2$ by {eq}`eq-verlet-mode`, the segment $i(-2, 2)$; the Midpoint
# rule of {ref}`ch-hamiltonian` is stable on the shorter segment $i(-1, 1)$ (derived
# there). {numref}`fig-stability-regions` draws the three regions (left) with $h\lambda$
# for the three layers' Jacobians at rest and $h = 0.1$, and zooms in on these
# (right): every eigenvalue of the
# plain layer with positive real part lies outside all of them, the
# antisymmetric layer's lie on the imaginary axis, outside Euler's disk, and the
# Hamiltonian block's spectrum is what Verlet is stable for. The antisymmetric
# layer has no $Y$/$Z$ split, so Verlet's segment does not apply to it: the
# reversible integrator it can be paired with is the Midpoint rule
# ({ref}`ch-hamiltonian`), and its $h\lambda$ lie inside Midpoint's shorter
# segment $i(-1, 1)$.

# %% tags=["remove-output", "nbval-ignore-output"]
h_lambda = {
    name: h_layer * stability.eigenvalues(layer_rhs[name], at_rest).numpy()
    for name in layer_rhs
}
assert (
    max(abs(z) for z in h_lambda[ham_key]) < 2
)  # every mode of the block inside Verlet's segment
assert all(
    abs(1 + z) > 1 for z in h_lambda[anti_key] if abs(z) > 1e-6
)  # outside Euler's disk
# inside Midpoint's segment i(-1, 1)
assert max(abs(z) for z in h_lambda[anti_key]) < 1
assert all(
    abs(z.imag) < 0.45 and -0.6 < z.real < 0.3 for zs in h_lambda.values() for z in zs
)  # the zoomed window holds every point
fig, (ax_whole, ax_zoom) = plt.subplots(1, 2, figsize=(10.8, 5.0))
plot_stability_regions(h_lambda, ax=ax_whole, extent=2.3, xlim=(-2.3, 1.0))
plot_stability_regions(h_lambda, ax=ax_zoom, extent=0.45, xlim=(-0.6, 0.3))
ax_whole.set_title("the whole regions: both segments end inside the window")
ax_zoom.set_title("zoom on the layers' hλ: both segments run past the edges")
ax_whole.get_legend().remove()  # the zoom's legend serves both
fig.tight_layout()
glue("fig_stability_regions", fig, display=False)
plt.show()

# %% [markdown]
# ```{glue:figure} fig_stability_regions
# :name: fig-stability-regions
#
# Stability regions in the plane of $h\lambda$: forward Euler's disk
# $\lvert 1 + h\lambda \rvert \le 1$, Verlet's segment $h\lambda \in i(-2, 2)$
# (for oscillations $\lambda = \pm i\omega$) and the explicit Midpoint rule's
# segment $i(-1, 1)$, with $h\lambda$ ($h = 0.1$) of the three layers' Jacobians at
# rest. Left, a window of $\pm 2.3$ that holds the whole disk and both segments,
# each ending at its own endpoint; the layers' $h\lambda$ crowd near the origin.
# Right, a zoom on $\lvert \operatorname{Im} h\lambda \rvert \le 0.45$ that
# separates them: there both segments cover the whole height of the window.
# ```
#
# (sec-reversible-stability)=
# ## Deep reversible networks and Re λ = 0
#
# So far stability was a property of the forward. A reversible network also runs
# its blocks *backward*: the reconstruction of {ref}`ch-coupling` and
# {ref}`ch-backprop` recovers each block's input from its output. Read as an ODE,
# the inverse integrates the same equation backward in time, $s = T - t$:
#
# $$
# \frac{dY}{ds} = -f(Y), \qquad \text{with Jacobian } -J ,
# $$
#
# whose eigenvalues are $-\lambda_i$. A perturbation of the output, such as the
# rounding of every float32 operation, therefore grows in the reconstruction like
# $e^{-\operatorname{Re}\lambda\, T}$. The forward is stable when
# $\operatorname{Re}\lambda \le 0$, the reconstruction when
# $\operatorname{Re}\lambda \ge 0$: for both to stay stable however deep the
# network, as $T \to \infty$, the real parts must be 0. That is why the reversible
# architectures of {ref}`ch-hamiltonian`, built for arbitrary depth, use
# right-hand sides with imaginary eigenvalues. It is a statement about how errors
# grow with depth, not a condition for reversibility. A coupling is invertible
# whatever its eigenvalues, and at a finite depth the amplification
# $e^{\lvert\operatorname{Re}\lambda\rvert T}$ only has to stay small next to
# $1/\varepsilon$ (about $10^7$ in float32) for the reconstruction to be
# accurate. RevNets with ReLU and BatchNorm blocks, whose eigenvalues nothing
# confines to the imaginary axis, reconstruct well in float32 at the depths they
# are trained at (measured below). This also answers the question {ref}`ch-coupling`
# left open: how fast a chain's reconstruction error grows with depth is set by
# how strongly its blocks contract.
#
# How does this fit with the volume preservation of additive couplings, shown in
# {ref}`ch-coupling`: $\det J = 1$ ({eq}`eq-revnet-jacobian`)? Near a state where
# $f$ is nearly linear, one step of length $h$ of the flow has the Jacobian
# $e^{hJ}$, and $\det e^{hJ} = e^{h \operatorname{tr} J} = e^{h \sum_i \lambda_i}$.
# A determinant of 1 therefore means that the eigenvalues of $J$ sum to 0; they are
# real or come in conjugate pairs, so their real parts sum to 0:
# $\sum_i \operatorname{Re}\lambda_i = 0$. Equivalently, the product of the step's
# eigenvalues $\mu_i = e^{h\lambda_i}$ is 1. Volume preservation constrains only
# the sum. A RevNet block may contract some directions as long as it expands
# others as much, and its reconstruction then amplifies errors along the directions
# the forward contracted. $\operatorname{Re}\lambda_i = 0$ for every $i$, which the
# Hamiltonian block has, is the stronger condition. Exact invertibility on paper
# is therefore no promise of numerical invertibility: {cite:t}`behrmann2021exploding`
# show that common invertible architectures can have *exploding inverses*, whose
# computed inverse, and with it the gradients of memory-saving backpropagation,
# can fail, on inputs from the training distribution as well as off it; the last
# section comes back to them.
#
# To see it, give the Hamiltonian block a damping or an excitation $a$ on both
# halves, keeping it exactly invertible (an affine coupling with the constant
# scale $e^{ha}$):
#
# $$
# \begin{aligned}
# Y_{j+1} &= e^{ha} Y_j + h K_1^\top \tanh(K_1 Z_j + b_1), \\
# Z_{j+1} &= e^{ha} Z_j - h K_2^\top \tanh(K_2 Y_{j+1} + b_2),
# \end{aligned}
# $$
#
# the step of $\dot Y = aY + K_1^\top\tanh(K_1 Z + b_1)$,
# $\dot Z = aZ - K_2^\top\tanh(K_2 Y + b_2)$, whose Jacobian is $aI + J$ with $J$
# as in {eq}`eq-hamiltonian-jacobian`: every eigenvalue has real part $a$. For
# $a = -0.5$, $0$ and $0.5$ and $h = 0.1$ we run chains of 10 to 200 such blocks
# (the same weights in every block, 8 + 8 features, random biases) forward and
# back in float32 and measure the reconstruction error relative to the input,
# and, in float64, how much the forward amplifies a small perturbation of the
# input.

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
half, h_rev = 8, 0.1
rev_params = {
    "K1": torch.randn(half, half, **f64) / math.sqrt(half),
    "K2": torch.randn(half, half, **f64) / math.sqrt(half),
    "b1": 0.5 * torch.randn(half, **f64),
    "b2": 0.5 * torch.randn(half, **f64),
}


def damped_forward(y, z, a, n, p):
    scale = math.exp(h_rev * a)
    for _ in range(n):
        y = scale * y + h_rev * torch.tanh(z @ p["K1"].T + p["b1"]) @ p["K1"]
        z = scale * z - h_rev * torch.tanh(y @ p["K2"].T + p["b2"]) @ p["K2"]
    return y, z


def damped_inverse(y, z, a, n, p):
    scale = math.exp(-h_rev * a)
    for _ in range(n):
        z = (z + h_rev * torch.tanh(y @ p["K2"].T + p["b2"]) @ p["K2"]) * scale
        y = (y - h_rev * torch.tanh(z @ p["K1"].T + p["b1"]) @ p["K1"]) * scale
    return y, z


params32 = {k: v.float() for k, v in rev_params.items()}
x_rev = torch.randn(64, 2 * half, **f64)
delta = 1e-7 * torch.randn(
    64, 2 * half, generator=torch.Generator().manual_seed(2), **f64
)
rev_depths = [10, 25, 50, 100, 200]
recon_error, fwd_growth = {}, {}
for a in (-0.5, 0.0, 0.5):
    recon_error[a], fwd_growth[a] = [], []
    for n in rev_depths:
        x32 = x_rev.float()
        back = torch.cat(
            damped_inverse(
                *damped_forward(x32[:, :half], x32[:, half:], a, n, params32),
                a,
                n,
                params32,
            ),
            1,
        )
        recon_error[a].append(((back - x32).abs().max() / x32.abs().max()).item())
        out = torch.cat(
            damped_forward(x_rev[:, :half], x_rev[:, half:], a, n, rev_params), 1
        )
        moved = torch.cat(
            damped_forward(
                (x_rev + delta)[:, :half], (x_rev + delta)[:, half:], a, n, rev_params
            ),
            1,
        )
        fwd_growth[a].append(((moved - out).norm() / delta.norm()).item())
show_table(
    ["Re lambda", "measured", *[f"{n} blocks" for n in rev_depths]],
    [
        [f"{a:+.1f}", what, *[f"{v:.1e}" for v in values[a]]]
        for a in recon_error
        for what, values in (
            ("reconstruction error, float32", recon_error),
            ("forward amplification", fwd_growth),
        )
    ],
)
assert (
    recon_error[-0.5][-1] > 100 * recon_error[-0.5][0] and fwd_growth[-0.5][-1] < 1e-2
)  # contracts; the inverse amplifies
assert recon_error[0.0][-1] < 1e-4 and max(fwd_growth[0.0]) < 10  # neither
assert (
    recon_error[0.5][-1] < 1e-4 and fwd_growth[0.5][-1] > 1e3
)  # the forward amplifies
glue("rev_err_neg", recon_error[-0.5][-1], display=False)
glue("rev_err_neg_first", recon_error[-0.5][0], display=False)
glue("rev_err_zero", recon_error[0.0][-1], display=False)
glue("rev_err_pos", recon_error[0.5][-1], display=False)
glue("rev_growth_pos", fwd_growth[0.5][-1], display=False)
glue("rev_growth_neg", fwd_growth[-0.5][-1], display=False)

fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for a, color in zip(recon_error, ["tab:blue", "0.3", "tab:red"], strict=True):
    axes[0].plot(
        rev_depths, recon_error[a], "o-", color=color, label=f"Re λ = {a:+.1f}"
    )
    axes[1].plot(
        rev_depths, fwd_growth[a], "o-", color=color, label=f"Re λ = {a:+.1f}"
    )
axes[0].set_ylabel("reconstruction error / max |x| (float32)")
axes[1].set_ylabel("|δ output| / |δ input| (float64)")
for ax, title in zip(
    axes,
    ["the inverse: stable needs Re λ ≥ 0", "the forward: stable needs Re λ ≤ 0"],
    strict=True,
):
    ax.set_yscale("log")
    ax.set_xlabel("blocks (h = 0.1)")
    ax.set_title(title)
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# With $\operatorname{Re}\lambda = -0.5$ the forward contracts a perturbation to
# {glue:text}`rev_growth_neg:.0e` of its size after 200 blocks, and the inverse
# pays for it: the reconstruction error grows from
# {glue:text}`rev_err_neg_first:.0e` to {glue:text}`rev_err_neg:.0e`, as the
# differences between inputs that the forward squeezed together must be blown up
# again from float32 rounding. With $\operatorname{Re}\lambda = +0.5$ the
# reconstruction stays at rounding level ({glue:text}`rev_err_pos:.0e`) but the
# forward amplifies perturbations of the input by {glue:text}`rev_growth_pos:.0e`.
# Only the Hamiltonian block itself, $\operatorname{Re}\lambda = 0$, keeps both at
# bay (reconstruction error {glue:text}`rev_err_zero:.0e`).
#
# Two checks close the section. The damped step scales both halves by $e^{ha}$, so
# its Jacobian determinant is $e^{2 \cdot 8\, ha}$ and $\log\det = 1.6a$ per block:
# only $a = 0$ preserves volume. And a chain of 100 RevNet blocks
# (`AdditiveCoupling` with the `basic_branch` of {ref}`ch-architectures`,
# BatchNorm-ReLU-convolution twice, BatchNorm normalising with the batch's
# statistics, 16 + 16 channels of 8 x 8) runs forward and back in float32.

# %% tags=["nbval-ignore-output"]
step_logdets = {}
for a in (-0.5, 0.0, 0.5):
    x_one = x_rev[:1]

    def one_step(x, a=a):
        y, z = damped_forward(x[:, :half], x[:, half:], a, 1, rev_params)
        return torch.cat([y, z], 1)

    jac = torch.autograd.functional.jacobian(one_step, x_one).reshape(
        2 * half, 2 * half
    )
    step_logdets[a] = torch.linalg.slogdet(jac).logabsdet.item()
    print(
        f"a = {a:+.1f}: log|det J| of one damped block {step_logdets[a]:+.6f}, "
        f"2 * {half} * h * a = {2 * half * h_rev * a:+.6f}"
    )
    assert abs(step_logdets[a] - 2 * half * h_rev * a) < 1e-10

torch.manual_seed(0)
revnet_chain = ReversibleSequence(
    [AdditiveCoupling(basic_branch(16, 16), basic_branch(16, 16)) for _ in range(100)]
)
x_chain = torch.randn(16, 32, 8, 8)
with torch.no_grad():
    y_chain = revnet_chain(x_chain)
    x_chain_back = revnet_chain.inverse(y_chain)
revnet_recon = ((x_chain_back - x_chain).abs().max() / x_chain.abs().max()).item()
print(
    "100 RevNet blocks (BatchNorm, ReLU, conv), float32: "
    f"reconstruction error / max |x| = {revnet_recon:.1e}"
)
assert revnet_recon < 1e-3  # accurate: far below the activations' size
glue("revnet_recon", revnet_recon, display=False)

# %% [markdown]
# The determinants match $1.6a$ to float64 round-off. The RevNet chain, whose
# blocks preserve volume but are not restricted to imaginary eigenvalues, gives
# its input back to {glue:text}`revnet_recon:.0e` of its size after 100 blocks.
# That is far deeper than a RevNet's reversible chains: RevNet-110 of
# {cite:t}`gomez2017revnet` has 9 blocks per stage (the official code's count), and
# each stage transition stores its input. At such depths the growth that
# $\operatorname{Re}\lambda \ne 0$ allows has no time to matter ({ref}`ch-coupling`
# and {ref}`ch-backprop` measure these errors in more detail).

# %% [markdown]
# (sec-invertibility-theory)=
# ## The theory around invertibility
#
# Reversible networks answer a question that the ODE reading of residual
# networks raises at once: if the network is a flow, why store its trajectory
# for the backward pass, when the flow can be run backward instead? They are not
# the only answer.
#
# **Neural ODEs and the adjoint method.** {cite:t}`chen2018neuralode` take the
# continuous reading literally. A Neural ODE's output is $z(T)$ for
# $\dot z = f(z, t, \theta)$, computed by a standard (often adaptive) solver, and
# its gradients come from the *adjoint method*: a second ODE, for
# $a(t) = \partial L / \partial z(t)$, is solved backward from $t = T$ to 0, and
# $z(t)$, which it needs, is recomputed on the way by integrating the original
# ODE backward from $z(T)$. Nothing from the forward solve is kept, so the memory
# does not grow with the number of steps: the same idea as reversible
# backpropagation ({ref}`ch-backprop`), recompute the states instead of storing
# them. What differs is what "recompute" means. A coupling's inverse undoes the
# forward's discrete steps exactly, up to rounding. The adjoint's backward solve
# is a *new* numerical solution of the ODE, started at $z(T)$, and it retraces the
# forward's trajectory only up to the solver's error. Chen et al. point this out
# themselves, name checkpointing as the remedy, and report that in their
# experiments it was not a practical problem.
#
# **Why the backward solve drifts.** {cite:t}`gholami2019anode` show that it can
# be one. Two effects separate the backward solve from the forward. The first is
# truncation: forward Euler maps $x$ to $y = x + hf(x)$, and the same explicit
# step run backward gives $\hat x = y - hf(y)$, which misses $x$ by
# $h\big(f(x) - f(y)\big) = -h^2 J f(x) + O(h^3)$ in every step. The second is
# conditioning: the directions the forward contracts
# ($\operatorname{Re}\lambda < 0$), the backward solve expands, as in the damped
# experiment of {ref}`sec-reversible-stability`, and the truncation errors are
# expanded with them. Their method, ANODE, gives up strict $O(1)$ memory to get
# accurate gradients: it stores the input of each ODE block, recomputes the block's
# trajectory *forward* from it in the backward pass, and differentiates the
# discrete steps the forward took (discretise, then optimise), for a memory of
# $O(L) + O(N_t)$ with $L$ blocks of $N_t$ steps.
#
# **Reverse-accurate integrators.** The other remedy keeps the memory constant and
# changes the integrator to one whose steps can be undone algebraically.
# {cite:t}`zhuang2021mali` build MALI on the asynchronous leapfrog integrator,
# which carries an estimate of the velocity $\dot z$ along with $z$ and whose every
# step has an exact inverse, so the backward pass retraces the forward's
# trajectory to rounding and the gradients are accurate, with a memory that does
# not grow with the number of steps. That is the reversible network's recipe, an
# invertible discretisation, applied to Neural ODEs; the Verlet, Midpoint and
# Leapfrog blocks of {ref}`ch-hamiltonian` are its fixed-step relatives.
#
# **Invertible ResNets.** A second road keeps the plain residual block
# $y = x + g(x)$ and constrains it. If $g$ is a contraction,
# $\operatorname{Lip}(g) < 1$, the block is invertible: $x$ is the unique fixed
# point of $x \mapsto y - g(x)$, and the iteration $x^{k+1} = y - g(x^k)$, started at
# $x^0 = y$, converges to it geometrically,
# $\lVert x^k - x \rVert \le \operatorname{Lip}(g)^k \lVert y - x \rVert$ (Banach's
# fixed-point theorem). {cite:t}`behrmann2019iresnet` enforce the constraint by
# spectral normalisation of the block's weights; they call the result invertible
# residual networks (i-ResNets). With $g = hf$ the first iterate,
# $x^1 = y - hf(y)$, *is* the Euler step run backward: the adjoint-style
# reconstruction is one fixed-point iteration, and iterating to convergence makes
# it an exact inverse, at the cost of several evaluations of $g$ per block and of
# the constraint on $g$.
#
# **Exploding inverses.** An inverse that exists can still be badly conditioned.
# The inverse of an i-ResNet block has a Lipschitz constant of at most
# $1/(1 - \operatorname{Lip}(g))$, large when $\operatorname{Lip}(g)$ nears 1. An
# additive coupling's inverse, $x_2 = y_2 - G(y_1)$, $x_1 = y_1 - F(x_2)$, stretches
# by at most about $(1 + \operatorname{Lip} F)(1 + \operatorname{Lip} G)$, which
# training can make large; an affine coupling divides by its scales, and its
# inverse has no bound at all where they approach 0.
# {cite:t}`behrmann2021exploding` derive bi-Lipschitz bounds for these
# building blocks, show that trained invertible networks can become numerically
# non-invertible, and propose a regulariser that keeps the inverse stable on the
# data, which is enough for memory-saving backpropagation.
#
# **The experiment.** Three reconstructions, one ODE: the Hamiltonian system of
# {ref}`sec-reversible-stability` with $a = 0$ (the same weights, $h = 0.1$,
# 8 + 8 features, 64 samples). Stepped with forward Euler,
# $x \leftarrow x + hf(x)$, it is a residual network. We reconstruct that network's
# input with Euler run backward, one step $x \approx y - hf(y)$ per block (the
# discrete counterpart of the adjoint's backward solve), and with 3 and 10
# fixed-point iterations per block (an i-ResNet inverse; here
# $h \operatorname{Lip}(f) < 1$, checked in the cell). Stepped with symplectic
# Euler, the same ODE is `revlib.AdditiveCoupling` with
# $F(Z) = hK_1^\top\tanh(K_1 Z + b_1)$ and $G(Y) = -hK_2^\top\tanh(K_2 Y + b_2)$, the
# Hamiltonian block, which we invert exactly. Depths run from 1 to 256 blocks, in
# float32 and float64; the error is $\max\lvert \hat x - x\rvert / \max\lvert x\rvert$.


# %% tags=["nbval-ignore-output"]
class Kick(nn.Module):
    """A coupling function of the Hamiltonian block: z -> sign h K^T tanh(K z + b)."""

    def __init__(self, K: torch.Tensor, b: torch.Tensor, sign: float) -> None:
        super().__init__()
        self.K, self.b, self.sign = K, b, sign

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.sign * h_rev * torch.tanh(z @ self.K.T + self.b) @ self.K


def ham_rhs(x, p):
    """f(Y, Z) = (K1^T tanh(K1 Z + b1), -K2^T tanh(K2 Y + b2)) on x = (Y, Z)."""
    y, z = x[:, :half], x[:, half:]
    return torch.cat(
        [
            torch.tanh(z @ p["K1"].T + p["b1"]) @ p["K1"],
            -torch.tanh(y @ p["K2"].T + p["b2"]) @ p["K2"],
        ],
        1,
    )


def euler_reconstruct(y, depth, p, iterations):
    """Undo `depth` forward Euler steps, solving each x = y - h f(x) by `iterations`
    fixed-point iterations from x = y (1 iteration: Euler run backward)."""
    for _ in range(depth):
        x = y
        for _ in range(iterations):
            x = y - h_rev * ham_rhs(x, p)
        y = x
    return y


lip_f = max(
    torch.linalg.matrix_norm(rev_params[k], ord=2).item() ** 2 for k in ("K1", "K2")
)  # |f'| <= max |K|^2: the Jacobian is block anti-diagonal and tanh' <= 1
assert h_rev * lip_f < 1  # each Euler block is an i-ResNet block
inv_depths = [2**i for i in range(9)]  # 1 to 256 blocks
inv_methods = {
    "Euler run backward (adjoint-style)": 1,
    "fixed point, 3 iterations": 3,
    "fixed point, 10 iterations (i-ResNet)": 10,
    "additive coupling, exact inverse": None,
}
inv_error = {}
for dtype in (torch.float32, torch.float64):
    p = {k: v.to(dtype) for k, v in rev_params.items()}
    x = x_rev.to(dtype)
    coupling = AdditiveCoupling(
        Kick(p["K1"], p["b1"], 1.0), Kick(p["K2"], p["b2"], -1.0)
    )
    with torch.no_grad():
        euler_states, coupling_states = [x], [x]
        for _ in range(inv_depths[-1]):
            euler_states.append(
                euler_states[-1] + h_rev * ham_rhs(euler_states[-1], p)
            )
            coupling_states.append(coupling(coupling_states[-1]))
        for name, iterations in inv_methods.items():
            errors = []
            for d in inv_depths:
                if iterations is None:
                    back = coupling_states[d]
                    for _ in range(d):
                        back = coupling.inverse(back)
                else:
                    back = euler_reconstruct(euler_states[d], d, p, iterations)
                errors.append(
                    ((back.double() - x_rev).abs().max() / x_rev.abs().max()).item()
                )
            inv_error[name, dtype] = errors
    if dtype == torch.float64:  # the coupling is the Hamiltonian block (a = 0)
        same = torch.cat(damped_forward(x[:, :half], x[:, half:], 0.0, 16, p), 1)
        assert torch.allclose(coupling_states[16], same, rtol=0, atol=1e-13)

shown = [0, 2, 4, 6, 8]  # 1, 4, 16, 64 and 256 blocks in the table
show_table(
    ["reconstruction", "precision", *[f"{inv_depths[i]} blocks" for i in shown]],
    [
        [name, str(dtype).removeprefix("torch."), *[f"{errs[i]:.1e}" for i in shown]]
        for (name, dtype), errs in inv_error.items()
    ],
)
euler_key, fp3_key, fp10_key, exact_key = inv_methods
e32, e64 = inv_error[euler_key, torch.float32], inv_error[euler_key, torch.float64]
c32, c64 = inv_error[exact_key, torch.float32], inv_error[exact_key, torch.float64]
fp3_64 = inv_error[fp3_key, torch.float64]
fp10_32 = inv_error[fp10_key, torch.float32]
fp10_64 = inv_error[fp10_key, torch.float64]
assert all(b > a for a, b in pairwise(e64)) and e64[-1] > 50 * e64[0]  # grows
assert all(abs(a / b - 1) < 0.01 for a, b in zip(e32, e64, strict=True))  # truncation
assert max(c64) < 1e-12 and max(c32) < 1e-4  # exact up to rounding
assert min(a / b for a, b in zip(e32, c32, strict=True)) > 1e4  # orders of magnitude
assert all(a < b / 10 for a, b in zip(fp3_64, e64, strict=True))  # iterations help
assert max(fp10_64) < 1e-7 and max(fp10_32) < 1e-4
# 10 iterations in float32: within a factor 10 of the coupling's error
assert all(a < 10 * b for a, b in zip(fp10_32, c32, strict=True))
glue("inv_h_lip", h_rev * lip_f, display=False)
glue("inv_euler_first", e32[0], display=False)
glue("inv_euler_last", e32[-1], display=False)
glue("inv_exact32_first", c32[0], display=False)
glue("inv_exact32_last", c32[-1], display=False)
glue("inv_exact64_max", max(c64), display=False)
glue("inv_fp3_last", fp3_64[-1], display=False)
glue("inv_fp10_32_last", fp10_32[-1], display=False)
glue("inv_fp10_64_max", max(fp10_64), display=False)
glue(
    "inv_ratio_min",
    min(a / b for a, b in zip(e32, c32, strict=True)),
    display=False,
)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
styles = ["o-", "s-", "^-", "D-"]
colors = ["tab:red", "tab:orange", "tab:green", "tab:blue"]
for ax, dtype in zip(axes, (torch.float32, torch.float64), strict=True):
    for name, style, color in zip(inv_methods, styles, colors, strict=True):
        ax.plot(inv_depths, inv_error[name, dtype], style, color=color, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("blocks (h = 0.1)")
    ax.set_title(str(dtype).removeprefix("torch."))
    ax.grid(alpha=0.3)
axes[0].set_ylabel("reconstruction error / max |x|")
fig.legend(
    *axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8
)
fig.suptitle("Reconstructing the input of the same ODE, stepped two ways")
fig.tight_layout(rect=(0, 0.07, 1, 1))
plt.show()

# %% [markdown]
# Run backward with Euler, the residual network's reconstruction misses its input
# by {glue:text}`inv_euler_first:.1e` of the input's size after one block and by
# {glue:text}`inv_euler_last:.1e` after 256: the reconstructed input is no longer
# related to the true one. The error is the same in float32 and float64 (the
# cell checks 1 %), so it is truncation, not rounding: a more precise format
# does not help, a smaller $h$ would. The exact inverse of the coupling, on the
# same ODE, stays at rounding level: from {glue:text}`inv_exact32_first:.0e` to
# {glue:text}`inv_exact32_last:.0e` in float32, at most
# {glue:text}`inv_exact64_max:.0e` in float64, and at every depth at least
# {glue:text}`inv_ratio_min:.0e` times below Euler's. Fixed-point iterations close
# the gap geometrically ($h\operatorname{Lip}(f) \le$ {glue:text}`inv_h_lip:.2f`
# here): 3 iterations per block leave {glue:text}`inv_fp3_last:.0e` at 256 blocks,
# and 10 iterations bring float32 to the coupling's rounding level
# ({glue:text}`inv_fp10_32_last:.0e` at 256 blocks; the cell checks that it stays
# within a factor 10 of the coupling's error at every depth), while in float64
# they stop at the iteration's own error (at most
# {glue:text}`inv_fp10_64_max:.0e`). Ten evaluations of $f$ per block buy what
# the coupling gets from one evaluation each of $F$ and $G$. The ODE here has
# imaginary eigenvalues, so the backward solve has no contraction to undo; with
# damping, as in {ref}`sec-reversible-stability`, both reconstructions lose
# accuracy exponentially, and exercise 7 measures how much.
#
# ## What we learned
#
# * A residual network is forward Euler for $\dot Y = f(Y, \theta(t))$; doubling
#   the depth at fixed $T$ halves the discretisation error.
# * Stability of the forward propagation is read from the eigenvalues of the
#   Jacobian of $f$: real parts $\le 0$ (no explosion), close to 0 (no
#   collapse). Haber and Ruthotto's toy shows all three regimes.
# * The antisymmetric layer and the Hamiltonian block have purely imaginary
#   Jacobian eigenvalues for every choice of weights; we proved it for the
#   Hamiltonian block and checked it to float64 round-off.
# * A reversible network runs its ODE in both directions; the inverse has the
#   Jacobian $-J$, so forward and reconstruction both stay stable at any depth
#   only for $\operatorname{Re}\lambda = 0$: with damping the reconstruction error
#   grows exponentially with depth, with excitation the forward does. This is an
#   asymptotic statement: at the depths RevNets use, blocks with other
#   eigenvalues reconstruct accurately in float32. Volume preservation
#   ($\det J = 1$) makes only the *sum* of the real parts zero.
# * The integrator matters as much as the ODE: forward Euler amplifies
#   perturbations of a purely oscillatory system, symplectic Euler ("Verlet", the
#   Hamiltonian block) does not ({numref}`fig-stability-regions`). {ref}`ch-hamiltonian` builds
#   reversible networks from Verlet, Midpoint and Leapfrog steps.
# * The eigenvalue criterion is about a frozen Jacobian. Along a trajectory whose
#   Jacobian changes from layer to layer, or is non-normal, finite-time growth can
#   exceed what the eigenvalues predict, as the $K_0$ toy already shows.
# * Neural ODEs save memory the same way, by recomputing states, but their adjoint
#   method integrates the ODE backward instead of inverting the forward's steps;
#   the reconstruction then carries truncation error, amplified where the flow
#   contracts (ANODE). Reverse-accurate integrators (MALI) make every step
#   invertible; i-ResNets invert a contractive residual block by fixed-point
#   iteration, whose first iterate is the Euler step run backward. On one ODE,
#   Euler run backward missed the input by orders of magnitude more than the
#   coupling's exact inverse, in float32 and float64 alike.
# * An exact inverse can still amplify errors: how much is a property of the
#   blocks (their bi-Lipschitz constants, their eigenvalues' real parts), which is
#   why exploding inverses are a numerical failure, not a logical one.
#
# ## Exercises
#
# 1. **Derivation.** Show that forward Euler applied to $\dot y = \lambda y$ with
#    $\lambda = -\gamma + i\omega$ is stable if and only if
#    $h \le 2\gamma/(\gamma^2 + \omega^2)$. What does this say about adding the
#    damping $-\gamma I$ to an antisymmetric layer?
# 2. **Derivation.** Repeat the $2 \times 2$ analysis {eq}`eq-verlet-mode` for the
#    other symplectic Euler step, which updates $Z$ first: $Z' = Z - hBY$,
#    $Y' = Y + hAZ'$. Is its stability interval different from the block's?
#    (Hint: the matrix is $\begin{pmatrix} 1 - h^2\omega^2 & h \\ -h\omega^2 & 1 \end{pmatrix}$
#    in suitable coordinates, with the same determinant and trace.)
# 3. **Experiment.** Rerun the perturbation experiment with $h = 0.25$ and then
#    with the Hamiltonian block's weights scaled by 10. Find the step size at
#    which its growth stops being bounded and compare with $2/\omega_{\max}$,
#    where $\omega_{\max}$ is the largest $\lvert\lambda\rvert$ of its Jacobian.
# 4. **Experiment.** Away from rest, each layer with its own random weights and
#    biases, measure the growth of a perturbation through 100 layers of each
#    kind. Design the comparison so that it could show a difference between the
#    three layers (what should be held fixed?), and report whether it does.
# 5. **Code change.** Add the damping $-\gamma Y$ to the antisymmetric layer
#    stepped with Euler and find the smallest $\gamma$ that keeps its growth
#    bounded at $h = 0.1$; compare with exercise 1.
# 6. **Derivation.** One residual block maps $x$ to $y = x + hf(x)$, with
#    $\operatorname{Lip}(f) = L$ and $hL < 1$. Show that Euler run backward,
#    $\hat x = y - hf(y)$, misses $x$ by $-h^2 f'(x) f(x) + O(h^3)$, and that $k$
#    fixed-point iterations from $x^0 = y$ miss it by at most
#    $(hL)^k\, h \lVert f(x) \rVert$. Check the bound on one block of the chapter's
#    experiment for $k = 1$, 3 and 10.
# 7. **Experiment.** Add the damping $a = -0.5$ of {ref}`sec-reversible-stability`
#    to the ODE of the last experiment: step it with forward Euler and reconstruct
#    by Euler run backward, and with the damped coupling and reconstruct exactly,
#    in float32, for 1 to 256 blocks. Does the exact inverse keep its advantage?
#    Compare its growth with $e^{\lvert a \rvert T}$.
#
# ## Solutions
#
# Each solution is folded; open it after trying the exercise. Where a solution
# has a number, the folded code cell above it computes and checks it.
#
# ```{admonition} Solution 1 (Euler's stability condition with damping)
# :class: dropdown
#
# Euler multiplies $y$ by $1 + h\lambda = (1 - h\gamma) + ih\omega$ per step, and
# $\lvert 1 + h\lambda\rvert^2 = 1 - 2h\gamma + h^2(\gamma^2 + \omega^2) \le 1$ if
# and only if $h(\gamma^2 + \omega^2) \le 2\gamma$, that is
# $h \le 2\gamma/(\gamma^2 + \omega^2)$. Without damping ($\gamma = 0$) no $h > 0$
# qualifies. For a layer whose eigenvalues are $i\omega$, adding $-\gamma I$ moves
# them to $-\gamma + i\omega$; read as a condition on $\gamma$ at fixed $h$,
# $\gamma^2 - 2\gamma/h + \omega^2 \le 0$, so
# $\gamma \ge \big(1 - \sqrt{1 - h^2\omega^2}\big)/h \approx h\omega^2/2$ for the
# fastest $\omega$, and a solution exists only if $h\,\omega_{\max} \le 1$. The
# damping needed is small, of order $h\omega^2$, but it is a contraction: it
# makes the forward forget, and, by {ref}`sec-reversible-stability`, makes the
# reconstruction error grow exponentially with depth. Solution 5 checks the bound
# on the chapter's layer.
# ```

# %% tags=["hide-cell"]
for h_omega in (1.9, 2.1):
    M = torch.tensor(
        [[1 - h_omega**2, 1.0], [-(h_omega**2), 1.0]], **f64
    )  # Z first, in the coordinates of the hint
    moduli = torch.linalg.eigvals(M).abs()
    print(
        f"h omega = {h_omega}: det {torch.linalg.det(M).item():.3f}, "
        f"trace {M.trace().item():.3f}, "
        f"eigenvalue moduli {', '.join(f'{m:.3f}' for m in moduli)}"
    )
    assert (moduli.max() - 1 < 1e-12) == (h_omega < 2)

# %% [markdown]
# ```{admonition} Solution 2 (the other symplectic Euler step)
# :class: dropdown
#
# On the same mode, $Y = \alpha\,Av$, $Z = \beta\,v$ with $BAv = \omega^2 v$, the
# step $Z' = Z - hBY$ gives $\beta' = \beta - h\omega^2\alpha$, then
# $Y' = Y + hAZ'$ gives $\alpha' = \alpha + h\beta'$ $= (1 - h^2\omega^2)\alpha + h\beta$.
# Its matrix $\begin{pmatrix} 1 - h^2\omega^2 & h \\ -h\omega^2 & 1 \end{pmatrix}$
# has determinant 1 and trace $2 - h^2\omega^2$, exactly those of $M_\omega$ in
# {eq}`eq-verlet-mode`. The characteristic polynomial is the same, so is the
# interval: stable for $0 < h\omega < 2$. The two variants are adjoint to each
# other (one is the other run backward in time), and alternating them with half
# steps gives Störmer–Verlet, with the same interval. The folded cell checks the
# two sides of $h\omega = 2$.
# ```


# %% tags=["hide-cell", "nbval-ignore-output"]
def hamiltonian_like(
    block: HamiltonianBlock, h: float, scale: float = 1.0
) -> HamiltonianBlock:
    """A copy of `block` with step size h and its kernels multiplied by `scale`."""
    new = HamiltonianBlock(C, h=h, activation="tanh", bias=False).double()
    with torch.no_grad():
        for p_new, p_old in zip(new.parameters(), block.parameters(), strict=True):
            p_new.copy_(scale * p_old)
    return new


omega_max = {
    scale: stability.eigenvalues(
        hamiltonian_like(linear_ham, 0.1, scale).rhs, at_rest
    )
    .abs()
    .max()
    .item()
    for scale in (1.0, 10.0)
}
sweep_rows = []
for scale in (1.0, 10.0):
    h_limit = 2 / omega_max[scale]
    for h_try in (0.25, 0.9 * h_limit, 1.1 * h_limit):
        g = stability.perturbation_growth(
            hamiltonian_like(linear_ham, h_try, scale),
            at_rest,
            depth=300,
            direction=direction,
        )
        sweep_rows.append((scale, h_try, h_limit, g.max().item()))
show_table(
    ["kernel scale", "h", "2 / omega_max", "largest growth over 300 layers"],
    [
        [
            f"{sc:g}",
            f"{hh:.4g}",
            f"{hl:.4g}",
            f"{g:.2e}" if math.isfinite(g) else "overflow",
        ]
        for sc, hh, hl, g in sweep_rows
    ],
)
for _scale, h_try, h_limit, g in sweep_rows:
    assert (g < 100) == (h_try < h_limit)  # bounded exactly below 2 / omega_max
glue("ex3_limit_1", 2 / omega_max[1.0], display=False)
glue("ex3_limit_10", 2 / omega_max[10.0], display=False)

# %% [markdown]
# ```{admonition} Solution 3 (where the Hamiltonian block stops being stable)
# :class: dropdown
#
# At rest the block is linear, so its growth is decided by {eq}`eq-verlet-mode`
# mode by mode: bounded if and only if $h\,\omega_{\max} < 2$. With the chapter's
# weights $2/\omega_{\max} = $ {glue:text}`ex3_limit_1:.2f`, so $h = 0.25$ is still
# stable. Multiplying the kernels by 10 multiplies $A = K^\top D K$ and $B$ by
# 100 and $\omega$ by 100, so the limit drops to
# {glue:text}`ex3_limit_10:.4f`; $h = 0.25$ is then far beyond it. The folded cell
# runs 300 layers at $0.9$ and $1.1$ times the limit for both scales: the growth
# stays bounded just below it and explodes just above it (then one root of
# $\mu^2 - (2 - h^2\omega^2)\mu + 1$ is real with $\lvert\mu\rvert > 1$).
# ```


# %% tags=["hide-cell", "nbval-ignore-output"]
def random_layers(kind: str, depth: int, seed: int) -> list:
    """`depth` layers of one kind, each with its own weights and biases (spectral norm
    of K fixed to 1)."""
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        if kind == "plain":
            conv = random_biases(nn.Conv2d(C, C, 3, padding=1).double())
            with torch.no_grad():
                conv.weight /= torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2)
            layers.append(lambda y, conv=conv: y + h_layer * torch.tanh(conv(y)))
        elif kind == "antisymmetric":
            anti = random_biases(AntisymmetricSigma(C, activation="tanh").double())
            with torch.no_grad():
                anti.weight /= torch.linalg.matrix_norm(anti.weight.flatten(1), ord=2)
            layers.append(lambda y, anti=anti: y + h_layer * anti(y))
        else:
            block = random_biases(
                HamiltonianBlock(C, h=h_layer, activation="tanh").double()
            )
            with torch.no_grad():
                for name, p in block.named_parameters():
                    if name.endswith("weight"):
                        p /= torch.linalg.matrix_norm(p.flatten(1), ord=2)
            layers.append(block)
    return layers


start_state = torch.randn(
    1, C, 4, 4, generator=torch.Generator().manual_seed(3), **f64
)
away_growth = {
    kind: [
        stability.perturbation_growth(
            random_layers(kind, 100, seed), start_state, direction=direction
        )[-1].item()
        for seed in range(5)
    ]
    for kind in ("plain", "antisymmetric", "Hamiltonian")
}
for kind, values in away_growth.items():
    print(
        f"{kind:14s} growth through 100 random layers, "
        f"5 seeds: {', '.join(f'{v:.2f}' for v in values)}"
    )
assert all(
    math.isfinite(v) and v > 0 for values in away_growth.values() for v in values
)
kinds = ("plain", "antisymmetric", "Hamiltonian")
per_seed = list(zip(*(away_growth[k] for k in kinds), strict=True))
anti_first = sum(anti > max(plain, ham) for plain, anti, ham in per_seed)
plain_above_ham = sum(plain > ham for plain, _, ham in per_seed)
others = away_growth["plain"] + away_growth["Hamiltonian"]
print(
    f"seeds in which the antisymmetric layer grows most: {anti_first} of 5; "
    f"its smallest growth {min(away_growth['antisymmetric']):.3f}, "
    f"the others' largest {max(others):.3f}"
)
print(f"seeds in which plain grows more than Hamiltonian: {plain_above_ham} of 5")
assert anti_first == 5 and min(away_growth["antisymmetric"]) > max(others)
assert 0 < plain_above_ham < 5  # plain and Hamiltonian: no consistent order
glue("ex4_plain_median", statistics.median(away_growth["plain"]), display=False)
glue(
    "ex4_anti_median", statistics.median(away_growth["antisymmetric"]), display=False
)
glue("ex4_ham_median", statistics.median(away_growth["Hamiltonian"]), display=False)
glue("ex4_anti_min", min(away_growth["antisymmetric"]), display=False)
glue("ex4_others_max", max(others), display=False)
glue("ex4_plain_above_ham", plain_above_ham, display=False)

# %% [markdown]
# ```{admonition} Solution 4 (away from rest, with random layers)
# :class: dropdown
#
# What must be held fixed so that a difference means something: the starting
# state, the direction of the perturbation, $h$, the activation, and above all
# the *size* of the weights, since growth scales with $h\lVert K\rVert$. The
# folded cell normalises every kernel to spectral norm 1 (as a matrix over its
# input channels and taps), draws fresh weights and biases for each of 100
# layers, and repeats with 5 seeds. The median growths are
# {glue:text}`ex4_plain_median:.2f` (plain), {glue:text}`ex4_anti_median:.2f`
# (antisymmetric, Euler) and {glue:text}`ex4_ham_median:.2f` (Hamiltonian), far
# closer together than at rest, where 300 identical layers gave
# {glue:text}`growth_plain:.0e`, {glue:text}`growth_anti:.0e` and at most
# {glue:text}`growth_ham_max:.2f`: with small,
# independent weights, $T = 10$ and states away from rest (where $\tanh' < 1$
# damps every layer), nothing compounds for long. The comparison still separates
# one layer. The antisymmetric layer stepped with forward Euler grows most in
# each of the 5 seeds, and its smallest growth, {glue:text}`ex4_anti_min:.3f`,
# exceeds the largest of the other two, {glue:text}`ex4_others_max:.3f`. That
# fits the mechanism of the rest-state experiment: whatever the weights and the
# state, the antisymmetric layer's Jacobian has imaginary eigenvalues, Euler's
# step stretches each of its modes by $\lvert 1 + ih\omega\rvert > 1$ in every
# layer, and so the excess can accumulate even when the layers change. The plain layer and the Hamiltonian block are not
# separated: the plain layer grows more in {glue:text}`ex4_plain_above_ham` of the
# 5 seeds and the Hamiltonian block in the others, so five draws show no order
# between them. Whether the plain layer's growing directions still compound
# when every layer has new weights is what a larger number of seeds, or longer
# chains, would have to decide.
# ```

# %% tags=["hide-cell"]
omega_anti = stability.eigenvalues(linear_anti, at_rest).abs().max().item()
gamma_bound = (1 - math.sqrt(1 - (h_layer * omega_anti) ** 2)) / h_layer


def damped_anti_radius(gamma: float) -> float:
    """Spectral radius of the Euler step of the antisymmetric layer with damping
    -gamma Y, at rest."""
    return (
        stability.eigenvalues(
            lambda y: y + h_layer * (linear_anti(y) - gamma * y), at_rest
        )
        .abs()
        .max()
        .item()
    )


gammas = torch.linspace(0, 2 * gamma_bound, 201, dtype=torch.float64).tolist()
gamma_found = next(g for g in gammas if damped_anti_radius(g) <= 1 + 1e-12)
print(
    f"omega_max = {omega_anti:.4f}; "
    "smallest gamma on the grid with a step of spectral radius <= 1: "
    f"{gamma_found:.5f}; exercise 1's bound "
    f"(1 - sqrt(1 - h^2 omega^2)) / h = {gamma_bound:.5f}"
)
assert abs(gamma_found - gamma_bound) <= 2 * gamma_bound / 200 + 1e-12
glue(
    "ex5_gamma", round(gamma_bound, 6), display=False
)  # rounded: the last digits vary by CPU

# %% [markdown]
# ```{admonition} Solution 5 (the smallest damping)
# :class: dropdown
#
# At rest the damped antisymmetric layer stepped with Euler is linear with
# eigenvalues $1 + h(i\omega - \gamma)$; growth stays bounded when all of them lie
# in the unit disk. The folded cell scans $\gamma$ on a fine grid and finds the
# smallest value whose step has spectral radius at most 1: it matches exercise
# 1's bound $\big(1 - \sqrt{1 - h^2\omega_{\max}^2}\big)/h = $
# {glue:text}`ex5_gamma:.4f` to the grid's resolution. Any damping below it lets
# the fastest mode grow; any damping at all also contracts the slow modes. That
# does not make the layer irreversible: its inverse still exists, but it expands
# those modes by the same factor, so rounding errors grow as the inverse
# reconstructs the states, and the reversible backward becomes less exact.
# ```

# %% tags=["hide-cell", "nbval-ignore-output"]
p = rev_params
x_one_block = x_rev + h_rev * ham_rhs(x_rev, p)  # one forward Euler block, float64
bound_rows = []
for k in (1, 3, 10):
    miss = (euler_reconstruct(x_one_block, 1, p, k) - x_rev).norm(dim=1)
    bound = (h_rev * lip_f) ** k * h_rev * ham_rhs(x_rev, p).norm(dim=1)
    bound_rows.append((k, miss.max().item(), (miss / bound).max().item()))
    assert bool((miss <= bound).all())  # the bound holds for every sample
# Euler run backward against its first-order term -h^2 f'(x) f(x):
jvp = torch.func.jvp(lambda x: ham_rhs(x, p), (x_rev,), (ham_rhs(x_rev, p),))[1]
first_order = -(h_rev**2) * jvp
euler_miss = euler_reconstruct(x_one_block, 1, p, 1) - x_rev
rest = ((euler_miss - first_order).norm() / euler_miss.norm()).item()
show_table(
    ["iterations k", "largest miss (per sample)", "largest miss / bound"],
    [[f"{k}", f"{m:.1e}", f"{r:.3f}"] for k, m, r in bound_rows],
)
print(f"Euler run backward: |miss - (-h^2 f' f)| / |miss| = {rest:.3f}")
assert rest < 0.2  # the O(h^3) rest is small next to the h^2 term
glue("ex6_rest", rest, display=False)
glue("ex6_ratio_max", max(r for _, _, r in bound_rows), display=False)

# %% [markdown]
# ```{admonition} Solution 6 (Euler run backward as one fixed-point iteration)
# :class: dropdown
#
# $\hat x - x = (y - hf(y)) - (y - hf(x)) = -h\big(f(y) - f(x)\big)$, and
# $y - x = hf(x)$, so a Taylor expansion of $f$ at $x$ gives
# $\hat x - x = -h\,f'(x)\,hf(x) + O(h^3) = -h^2 f'(x) f(x) + O(h^3)$. For the
# iteration, $x$ itself satisfies $x = y - hf(x)$, so
# $x^{j+1} - x = -h\big(f(x^j) - f(x)\big)$ and
# $\lVert x^{j+1} - x \rVert \le hL \lVert x^j - x \rVert$; after $k$ steps from
# $x^0 = y$, $\lVert x^k - x \rVert \le (hL)^k \lVert y - x \rVert
# = (hL)^k h \lVert f(x) \rVert$. The first iterate is $\hat x$. The folded cell
# takes one block of the chapter's Euler network ($L$ bounded by
# $\max(\lVert K_1 \rVert^2, \lVert K_2 \rVert^2)$), checks the bound for every sample
# and $k = 1$, 3, 10 (the largest miss is {glue:text}`ex6_ratio_max:.2f` of the
# bound), and compares the Euler miss with $-h^2 f'(x) f(x)$, computed with a
# Jacobian-vector product: they differ by {glue:text}`ex6_rest:.2f` of the miss,
# the $O(h^3)$ rest. The bound is a worst case; the measured contraction per
# iteration is smaller than $hL$ because $\tanh' < 1$ away from 0 and the
# Lipschitz bound is the largest stretch over all directions.
# ```

# %% tags=["hide-cell", "nbval-ignore-output"]
a_damped = -0.5
p32 = {k: v.float() for k, v in rev_params.items()}
x32 = x_rev.float()
damped_errors = {"Euler run backward": [], "damped coupling, exact inverse": []}
with torch.no_grad():
    euler_states = [x32]
    for _ in range(inv_depths[-1]):
        x_now = euler_states[-1]
        euler_states.append(x_now + h_rev * (a_damped * x_now + ham_rhs(x_now, p32)))
    for d in inv_depths:
        back = euler_states[d]
        for _ in range(d):
            back = back - h_rev * (a_damped * back + ham_rhs(back, p32))
        exact_back = torch.cat(
            damped_inverse(
                *damped_forward(x32[:, :half], x32[:, half:], a_damped, d, p32),
                a_damped,
                d,
                p32,
            ),
            1,
        )
        for name, b in zip(damped_errors, (back, exact_back), strict=True):
            err = ((b.double() - x_rev).abs().max() / x_rev.abs().max()).item()
            damped_errors[name].append(err)
show_table(
    ["reconstruction (a = -0.5, float32)", *[f"{d} blocks" for d in inv_depths]],
    [[name, *[f"{e:.1e}" for e in errs]] for name, errs in damped_errors.items()],
)
d_euler, d_exact = damped_errors.values()
growth_exact = d_exact[-1] / d_exact[0]
predicted_growth = math.exp(abs(a_damped) * h_rev * (inv_depths[-1] - 1))
print(
    f"exact inverse: error grows by {growth_exact:.1e} from 1 to 256 blocks; "
    f"exp(|a| h (256 - 1)) = {predicted_growth:.1e}"
)
assert all(e > 100 * c for e, c in zip(d_euler, d_exact, strict=True))
assert d_exact[-1] > 1e-3 and d_euler[-1] > 1  # both lose the input
assert 1 / 30 < growth_exact / predicted_growth < 30  # e^{|a| T}, give or take
glue("ex7_exact_first", d_exact[0], display=False)
glue("ex7_exact_last", d_exact[-1], display=False)
glue("ex7_euler_last", d_euler[-1], display=False)
glue("ex7_growth", growth_exact, display=False)
glue("ex7_predicted", predicted_growth, display=False)

# %% [markdown]
# ```{admonition} Solution 7 (reconstruction through a damped flow)
# :class: dropdown
#
# The exact inverse loses its accuracy too: its float32 error grows from
# {glue:text}`ex7_exact_first:.0e` after one block to
# {glue:text}`ex7_exact_last:.0e` after 256, a factor
# {glue:text}`ex7_growth:.0e`, of the order of $e^{\lvert a \rvert h (256 - 1)} =$
# {glue:text}`ex7_predicted:.0e` that the backward flow's expansion predicts (the
# cell accepts a factor 30 either way). No reconstruction, exact or not, can undo
# a contraction without blowing up the rounding errors made along the way. Euler
# run backward has that amplification *and* its truncation error,
# and after 256 blocks misses the input by {glue:text}`ex7_euler_last:.0e` times
# its size; it stays more than 100 times worse than the exact inverse at every
# depth. Keeping the inverse exact removes the truncation error; only
# $\operatorname{Re}\lambda \ge 0$ along the way, or stored checkpoints as in
# ANODE, removes the amplification.
# ```
