# %% [markdown]
# (ch-architectures)=
# # RevNet architecture and memory
#
# {ref}`ch-backprop` built a reversible chain that keeps no block activations. A real
# network is more than a chain: it has a stem, stages of different widths and
# resolutions, and transitions between them that cannot be inverted. This
# chapter builds the networks of {cite:t}`gomez2017revnet`, the
# RevNets and the ResNets {cite:p}`he2016resnet` they were compared with at equal
# parameter count, exactly as the official code {cite:p}`revnetcode` does (the
# parameter counts match to the last digit), and then measures what they keep
# for the backward pass, model by model and layer by layer. It does the same for
# the reversible VGG-19 {cite:p}`simonyan2015vgg` of the Rev-VGG course project
# of {cite:t}`saha_revvgg`, and puts every measured number beside the published
# ones, saying which is which and why they differ.
#
# Two ways of counting activation memory appear side by side:
#
# * the **layer-output count**, the Rev-VGG project's way: each layer keeps its output, one
#   float32 tensor, and a reversible block keeps nothing;
# * the **measured bytes**: what autograd actually saves, found by
#   `revlib.core.memory` with `torch.autograd.graph.saved_tensors_hooks` (each
#   storage once, parameters excluded).
#
# `revlib.core.memcalc.memory_table` computes both for every layer, so each difference
# can be traced to the layer that causes it.

# %%

import copy
from itertools import pairwise

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display
from torch import nn

import revlib
from revlib.core.memcalc import memory_table
from revlib.core.memory import MiB, saved_tensor_bytes
from revlib.harness.figures import show_table
from revlib.harness.notebook import RunSettings, glue, peak_memory_bytes
from revlib.harness.schematics import draw_revnet_stages
from revlib.models import count_parameters, rev_vgg, vgg19
from revlib.models import revnet as R
from revlib.models.vgg import LinearBlock

# Set full_run=True on a GPU (e.g. Colab) to also measure CUDA peak memory at
# batch 128.
RUN = RunSettings.from_env(full_run=False)
DEVICE = RUN.device() if RUN.full_run else torch.device("cpu")

# Everything below measures bytes, not time, on batches of a few images: one CPU
# thread is as fast, and it keeps a busy machine from slowing down.
if DEVICE.type == "cpu":
    torch.set_num_threads(1)
_ = torch.manual_seed(0)

# %% [markdown]
# ## The networks of the official code
#
# The official TensorFlow code (`renmengye/revnet-public`, {cite:p}`revnetcode`) fixes every detail
# that a parameter count depends on; `revlib.models.revnet` follows it.
#
# * **Stem**: a 3x3 convolution (on ImageNet 7x7 with stride 2, then 3x3 max
#   pooling with stride 2), BatchNorm, ReLU.
# * **Pre-activation units** {cite:p}`he2016identity`. A *basic* branch is BN-ReLU-conv3x3,
#   BN-ReLU-conv3x3; a *bottleneck* branch is BN-ReLU-conv1x1, BN-ReLU-conv3x3,
#   BN-ReLU-conv1x1, the inner width a quarter of the output width. The first unit
#   of the network skips its leading BN-ReLU, since the stem has just applied one.
# * **ResNet unit**: $y = x + \mathcal{F}(x)$. **RevNet unit**: the channels are
#   split into halves, $y_1 = x_1 + F(x_2)$, $y_2 = x_2 + G(y_1)$, with F and G
#   branches of half the width (`revlib.AdditiveCoupling`).
# * **Stage transitions**: the first unit of stages 2 and 3 halves the resolution
#   (stride 2 in the first convolution of the branch) and widens the channels.
#   Its shortcut is parameter-free for basic units (2x2 average pooling, then
#   zero channels padded on both sides) and a 1x1 convolution with stride 2 for
#   bottleneck units. In a RevNet this unit applies the shortcut to each half; it
#   is not invertible (pooling loses information), so it sits *outside* the
#   stage's `ReversibleSequence`, and, as in the official code, keeps its input
#   and recomputes its inside in the backward pass (it runs under checkpointing).
# * **Head**: BN, ReLU, global average pooling, a fully connected layer with bias.
#
# {numref}`fig-revnet-stages` shows the layout of RevNet-38: only the units
# inside the stages are reversible.

# %% tags=["remove-output"]
fig = draw_revnet_stages(units=(3, 3, 3), channels=(32, 64, 112))
glue("fig_revnet_stages", fig, display=False)
plt.show()

# %% [markdown]
# ```{glue:figure} fig_revnet_stages
# :name: fig-revnet-stages
#
# RevNet-38 for CIFAR: a stem convolution, three stages of three reversible
# units (32, 64 and 112 channels), two stride-2 transitions that widen the
# channels, and the head. Orange boxes are not invertible and keep their input
# for the backward; blue units are rebuilt from their outputs. (Each transition
# is drawn apart from the stage's units; in the official code it is the first,
# non-reversible unit of stages 2 and 3.)
# ```
#
# The widths and units per stage come from the official configurations. A
# RevNet unit has four 3x3 convolutions where a basic ResNet unit has two, so
# RevNet-38 has 3 units per stage where ResNet-32 has 5, and it is wider to have
# the same number of parameters. The counts below are of conv weights (no conv
# bias), BN scales and shifts, and the classifier's weight and bias; the
# reference values were counted from the official code's variable shapes
# {cite:p}`revnetcode`. The last column is the rounded count that
# {cite:t}`chang2018reversible` print for the same models (read in the paper).

# %%
# counted from the official code's variable shapes, at 10 and 100 classes
OFFICIAL = {
    "resnet32": (464_154, 470_004),
    "revnet38": (464_890, 475_060),
    "resnet110": (1_727_962, 1_733_812),
    "revnet110": (1_729_194, 1_740_804),
    "resnet164": (1_703_258, 1_726_388),
    "revnet164": (1_748_778, 1_794_948),
    "resnet101": (44_541_480, None),
    "revnet104": (45_428_072, None),
}
CHANG_PRINTED = {
    "resnet32": "0.46 / 0.47",
    "revnet38": "0.46 / 0.48",
    "resnet110": "1.73 / 1.73",
    "revnet110": "1.73 / 1.74",
}
CIFAR = ["resnet32", "revnet38", "resnet110", "revnet110", "resnet164", "revnet164"]
LABEL = {
    "resnet32": "ResNet-32",
    "revnet38": "RevNet-38",
    "resnet110": "ResNet-110",
    "revnet110": "RevNet-110",
    "resnet164": "ResNet-164",
    "revnet164": "RevNet-164",
    "resnet101": "ResNet-101 (ImageNet)",
    "revnet104": "RevNet-104 (ImageNet)",
}


def fmt(pair):
    return " / ".join(f"{v:,}" for v in pair if v is not None)


ours = {}
rows = [
    "| model | block | units per stage | widths (stem, stages) "
    "| parameters, C-10 / C-100 or ImageNet (ours) "
    "| official code | Chang et al. (M) |",
    "|---|---|---|---|---|---|---|",
]
for name in OFFICIAL:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        m10 = getattr(R, name)(num_classes=10 if name in CIFAR else 1000)
        m100 = getattr(R, name)(num_classes=100) if name in CIFAR else None
    ours[name] = (
        count_parameters(m10),
        count_parameters(m100) if m100 is not None else None,
    )
    ref = OFFICIAL[name]
    rows.append(
        f"| {LABEL[name]} | {m10.block} | {'-'.join(map(str, m10.units))} | "
        f"{'-'.join(map(str, m10.widths))} | {fmt(ours[name])} "
        f"| {fmt(ref)} | {CHANG_PRINTED.get(name, '')} |"
    )
display(Markdown("\n".join(rows)))
assert ours == OFFICIAL  # every count, to the last parameter

# %% [markdown]
# All eight counts, at 10 and at 100 classes, equal the official code's. Getting
# there needs every detail above: for example, without the skipped pre-activation
# of the first unit ResNet-32 would have 32 parameters more (one BatchNorm of 16
# channels), and 1x1 projections instead of pooling and padding in its two
# transitions would add 2,560 (16 x 32 + 32 x 64).
#
# Each RevNet's stage is a `ReversibleSequence`, and the model exposes one
# switch for all of them: `model.mode = "reversible" | "checkpoint" | "autograd"`
# (or `revlib.models.set_mode(model, mode)`, which works on any model). The same
# weights give the same outputs in every mode and the same gradients
# (`tests/models/test_revnet.py` checks this to 1e-10 in float64).

# %%
print(
    R.revnet38().stages[1]
)  # a transition, then a ReversibleSequence of two couplings

# %% [markdown]
# ## What a RevNet keeps, layer by layer
#
# Here is `memory_table` for RevNet-38 in mode `"reversible"`, measured on a
# batch of 2 CIFAR-sized images. A `ReversibleSequence` and a checkpointed
# transition are one row each: their insides are recomputed in the backward pass.
# The column *activations kept* is the layer-output count (per image), the last
# column the bytes autograd saved during that row's forward, for the whole batch
# of 2 (each storage charged to the first layer that saved it).

# %%
x2 = torch.randn(2, 3, 32, 32)
rev38 = R.revnet38()
table38 = memory_table(rev38, x2)
display(Markdown(table38.to_markdown(batch=128)))
assert table38.measured_bytes == saved_tensor_bytes(
    rev38, x2
)  # the rows add up to the meter's total
stem_bytes = sum(r.saved_bytes for r in table38.rows if r.name.startswith("stem"))
seq_rows = [r for r in table38.rows if r.kind == "ReversibleSequence"]
transition_rows = [r for r in table38.rows if r.kind == "RevTransition"]
# each reversible stage keeps exactly one tensor: its output (2 images, float32)
assert all(
    r.saved_bytes == 2 * 4 * torch.Size(r.output_shape).numel() for r in seq_rows
)
assert all(
    r.saved_bytes == 0 for r in transition_rows
)  # their input is that same output
glue("rev38_stem_share", 100 * stem_bytes / table38.measured_bytes, display=False)
glue("rev38_total_128", table38.measured_at(128) / MiB, display=False)

# %% [markdown]
# The three reversible stages keep one tensor each, their output; the two
# transitions keep nothing new, because their input *is* that output (one
# storage, counted once). What remains is ordinary: the stem keeps the image,
# the convolution's output (BatchNorm's input) and the ReLU's output, which is
# {glue:text}`rev38_stem_share:.0f`% of the total; the head keeps the last
# ReLU's output. None of this depends on depth, which is the point of a RevNet:
# at batch 128 it is {glue:text}`rev38_total_128:.1f` MiB for RevNet-38 and will be
# almost the same for RevNet-110.
#
# ## Activation memory of the six CIFAR models at batch 128
#
# Saved bytes grow with the batch size, but not quite in proportion: every saved
# activation has one slice per image, while BatchNorm's saved batch statistics
# (a mean and an inverse standard deviation per channel) do not grow. So the
# saved bytes are an affine function of the batch, $a N + b$, with $b$ the
# statistics, which `memory_table` reports separately (`fixed_bytes`). We first
# check that law exactly, at batches 1, 2, 4 and 8 on RevNet-38 in all three modes
# and on ResNet-32, and then against a direct measurement at batch 128. After that
# a batch of 2 is enough to know the bytes at batch 128 exactly, which keeps this
# chapter fast on a CPU (a direct measurement of ResNet-164 at batch 128 would
# hold 3 GiB of activations).


# %%
def measured(model, batch, size=32):
    return memory_table(model, torch.randn(batch, 3, size, size)).measured_bytes


checks = 0
for model, modes in (
    (R.revnet38(), ("reversible", "checkpoint", "autograd")),
    (R.resnet32(), (None,)),
):
    for mode in modes:
        if mode:
            model.mode = mode
        t1 = memory_table(model, torch.randn(1, 3, 32, 32))
        for batch in (2, 4, 8):
            assert measured(model, batch) == t1.measured_at(batch)  # a*N + b, exactly
            checks += 1
rev38.mode = "reversible"
direct_128 = {
    "revnet38 (reversible)": saved_tensor_bytes(rev38, torch.randn(128, 3, 32, 32)),
    "resnet32": saved_tensor_bytes(R.resnet32(), torch.randn(128, 3, 32, 32)),
}
assert direct_128["revnet38 (reversible)"] == table38.measured_at(128)
assert direct_128["resnet32"] == memory_table(R.resnet32(), x2).measured_at(128)
print(
    f"{checks} batch sizes predicted exactly; "
    "direct measurements at batch 128 agree:",
    {k: f"{v:,} bytes" for k, v in direct_128.items()},
)

# %%
MODES = ("reversible", "checkpoint", "autograd")
mem = {}  # measured bytes at batch 128
counted = {}  # layer-output count at batch 128
for name in CIFAR:
    model = getattr(R, name)()
    for mode in MODES if model.reversible else ("autograd",):
        model.mode = mode
        t = memory_table(model, x2)
        mem[name, mode] = t.measured_at(128)
        counted[name, mode] = t.kept_bytes(128)

show_table(
    [
        "model",
        "parameters",
        "mode",
        "measured (MiB)",
        "vs autograd",
        "layer-output count (MiB)",
    ],
    [
        [
            LABEL[name],
            f"{OFFICIAL[name][0]:,}",
            mode,
            f"{mem[name, mode] / MiB:.2f}",
            f"{mem[name, mode] / mem[name, 'autograd']:.3f}",
            f"{counted[name, mode] / MiB:.2f}",
        ]
        for name in CIFAR
        for mode in MODES
        if (name, mode) in mem
    ],
)

for rev, res in (
    ("revnet38", "resnet32"),
    ("revnet110", "resnet110"),
    ("revnet164", "resnet164"),
):
    assert mem[rev, "reversible"] < mem[rev, "checkpoint"] < mem[rev, "autograd"]
    assert mem[rev, "reversible"] < mem[res, "autograd"] / 4  # at equal parameters
assert (
    abs(mem["revnet110", "reversible"] / mem["revnet38", "reversible"] - 1) < 0.05
)  # flat in depth
assert mem["resnet110", "autograd"] > 3 * mem["resnet32", "autograd"]
for key, value in {
    "mem_res32": mem["resnet32", "autograd"],
    "mem_rev38": mem["revnet38", "reversible"],
    "mem_res110": mem["resnet110", "autograd"],
    "mem_rev110": mem["revnet110", "reversible"],
    "mem_res164": mem["resnet164", "autograd"],
    "mem_rev164": mem["revnet164", "reversible"],
    "mem_rev164_ckpt": mem["revnet164", "checkpoint"],
    "mem_rev164_auto": mem["revnet164", "autograd"],
}.items():
    glue(key, value / MiB, display=False)
glue(
    "ratio_110",
    mem["resnet110", "autograd"] / mem["revnet110", "reversible"],
    display=False,
)

# %% tags=["remove-output"]
fig, ax = plt.subplots(figsize=(8, 3.6))
mode_colors = {
    "autograd": "0.45",
    "checkpoint": "tab:orange",
    "reversible": "tab:blue",
}
for i, name in enumerate(CIFAR):
    for j, mode in enumerate(MODES[::-1]):  # autograd, checkpoint, reversible
        if (name, mode) in mem:
            offset = 0.0 if name.startswith("res") else (j - 1) * 0.27
            ax.plot(
                i + offset,
                mem[name, mode] / MiB,
                "o",
                markersize=7,
                color=mode_colors[mode],
                label=mode if i == 1 else None,
            )
            ax.text(
                i + offset,
                mem[name, mode] / MiB,
                f"{mem[name, mode] / MiB:.0f}",
                ha="center",
                va="bottom",
                fontsize=7,
            )
ax.set_xticks(range(len(CIFAR)), [LABEL[n] for n in CIFAR])
ax.set_yscale("log")
ax.set_ylabel("saved for backward, batch 128 (MiB)")
ax.set_title("Activation memory of the six CIFAR networks (measured, float32)")
ax.legend(title="mode", fontsize=8)
fig.tight_layout()
glue("fig_memory_bars", fig, display=False)
plt.show()

# %% [markdown]
# ```{glue:figure} fig_memory_bars
# :name: fig-memory-bars
#
# The table above as dots on a log scale, where equal ratios are equal distances:
# each ResNet in mode `"autograd"` beside the RevNet of the same parameter count in
# its three modes. Bytes saved for the backward at batch 128, measured.
# ```

# %% [markdown]
# At batch 128, ResNet-32, -110 and -164 keep {glue:text}`mem_res32:.0f`,
# {glue:text}`mem_res110:.0f` and {glue:text}`mem_res164:.0f` MiB; the RevNets of the
# same parameter counts keep {glue:text}`mem_rev38:.1f`, {glue:text}`mem_rev110:.1f`
# and {glue:text}`mem_rev164:.1f` MiB in mode `"reversible"`, a factor
# {glue:text}`ratio_110:.1f` less at depth 110. RevNet-38 and RevNet-110 keep
# nearly the same amount: what a RevNet keeps depends on its widths, not on its
# depth (RevNet-110's last stage is 128 channels wide where RevNet-38's is 112,
# hence the small difference). RevNet-164 keeps more than RevNet-110 because its
# bottleneck stages are four times wider (128, 256 and 512 channels), so each
# stage's output is four times larger. Mode `"checkpoint"` keeps every block's
# input ({glue:text}`mem_rev164_ckpt:.0f` MiB for RevNet-164), mode `"autograd"`
# everything ({glue:text}`mem_rev164_auto:.0f` MiB).
#
# The layer-output count gets ResNets nearly right and RevNets badly wrong: it
# says nothing is kept inside a reversible stage, which is true, but it also
# misses the stage outputs that start the reconstruction, the stem's ReLU
# output and, for RevNet-164, the stage outputs of four times the width.
#
# ## Beside MemCNN's published measurements
#
# MemCNN {cite:p}`leemput2019memcnn`, a PyTorch library for reversible networks,
# publishes activation memory for the same six networks trained on CIFAR-10 in
# its README. Its table gives megabytes; the table does not say at which batch
# size or how the bytes were counted, so the absolute values are not directly
# comparable. The ratios are.

# %%
MEMCNN = {
    "resnet32": 238.6,
    "revnet38": 85.6,
    "resnet110": 810.7,
    "revnet110": 85.7,
    "resnet164": 2452.8,
    "revnet164": 432.7,
}  # MemCNN README, "Activations (MB)"
ours_mib = {
    name: mem[name, "reversible" if name.startswith("rev") else "autograd"] / MiB
    for name in CIFAR
}
show_table(
    [
        "model",
        "MemCNN README (MB, quoted)",
        "ours, batch 128 (MiB)",
        "MemCNN / ours",
        "MemCNN, vs ResNet-32",
        "ours, vs ResNet-32",
    ],
    [
        [
            LABEL[name],
            f"{MEMCNN[name]:.1f}",
            f"{ours_mib[name]:.1f}",
            f"{MEMCNN[name] / ours_mib[name]:.2f}",
            f"{MEMCNN[name] / MEMCNN['resnet32']:.2f}",
            f"{ours_mib[name] / ours_mib['resnet32']:.2f}",
        ]
        for name in CIFAR
    ],
)
growth_ours = mem["resnet110", "autograd"] / mem["resnet32", "autograd"]
growth_memcnn = MEMCNN["resnet110"] / MEMCNN["resnet32"]
assert (
    abs(growth_ours / growth_memcnn - 1) < 0.05
)  # ResNet growth with depth: same within 5%
glue(
    "memcnn_rev164_to_110", MEMCNN["revnet164"] / MEMCNN["revnet110"], display=False
)  # quoted numbers
glue(
    "ours_rev164_to_110",
    mem["revnet164", "reversible"] / mem["revnet110", "reversible"],
    display=False,
)
glue("growth_ours", growth_ours, display=False)
glue("growth_memcnn", growth_memcnn, display=False)
glue(
    "memcnn_scale",
    MEMCNN["resnet32"] / (mem["resnet32", "autograd"] / MiB),
    display=False,
)
memcnn_over_ours = {name: MEMCNN[name] / ours_mib[name] for name in CIFAR}
res_factors = [memcnn_over_ours[n] for n in CIFAR if n.startswith("res")]
rev_factors = [memcnn_over_ours[n] for n in CIFAR if n.startswith("rev")]
assert max(res_factors) / min(res_factors) < 1.05  # ResNets: one constant factor
assert max(rev_factors) / min(rev_factors) > 1.5  # RevNets: not
for name in ("revnet38", "revnet110", "revnet164"):
    glue(f"memcnn_factor_{name}", memcnn_over_ours[name], display=False)

# %% [markdown]
# For the ResNets, and only for them, the two sets of measurements differ by a
# constant factor (MemCNN's are about {glue:text}`memcnn_scale:.2f` of ours at
# batch 128, as a different batch size or counting method would make them): from
# ResNet-32 to ResNet-110 MemCNN's memory grows {glue:text}`growth_memcnn:.2f`
# times and ours {glue:text}`growth_ours:.2f` times. For the RevNets the factor is
# not constant: MemCNN / ours is {glue:text}`memcnn_factor_revnet38:.2f`,
# {glue:text}`memcnn_factor_revnet110:.2f` and {glue:text}`memcnn_factor_revnet164:.2f`
# for RevNet-38, -110 and -164. Both show memory flat from depth 38 to 110, but
# RevNet-164 keeps {glue:text}`memcnn_rev164_to_110:.1f` times its RevNet-110 in
# MemCNN's table and {glue:text}`ours_rev164_to_110:.1f` times in ours. We do not know how
# MemCNN's measurement treats the transitions and the stem; the official code
# and ours keep a transition's input only.
#
# ## Rev-VGG and VGG-19
#
# The Rev-VGG course project {cite:p}`saha_revvgg` makes VGG-19 reversible and tabulates, layer by layer, the output
# shape, the parameters and the activations kept, with totals at batch 128:
# VGG-19 has 20,565,834 parameters and keeps 638,474 activations per image,
# 311.75 MB; Rev-VGG has 20,824,330 parameters and keeps 105,482, 51.50 MB, a
# reduction of 83.4%. Its count is the layer-output count above (float32, one
# tensor per layer output, ReLU not listed, a RevBlock 0), and its "MB" are MiB
# ($638{,}474 \times 4 \times 128 / 2^{20} = 311.75$).
#
# `revlib.models.vgg19` is the project's VGG-19 (16 convolutions with bias, each
# with BatchNorm and ReLU, five 2x2 max poolings, three fully connected layers).
# The project gives each RevBlock's parameter count but not its inside, so
# `revlib.models.rev_vgg`'s inside is *our reconstruction* from those counts,
# one design that has exactly those counts and is genuinely reversible, not the
# project's code: each RevBlock starts with VGG's own first convolution of the stage
# (with BatchNorm and ReLU), which changes the width and so is not invertible:
# it keeps its input, the max-pool output that the project's table already counts;
# then three additive couplings at the new width $C$, F and G each
# conv3x3-BN-ReLU-conv3x3 on half the channels, the *first convolution without
# bias* and the second with, hold exactly the weights of three $C$-to-$C$
# convolutions with bias and BatchNorm. For RevBlocks 2 to 4 these are the
# stage's other three convolutions. RevBlock_1 stands for VGG-19's second stage,
# which has only two convolutions (64 to 128 and 128 to 128), and VGG-19's
# first stage loses its second convolution; so the design has the
# weights of 17 convolutions (the stem's, then four per RevBlock) against
# VGG-19's 16, which is why its parameter count is larger. Three C-to-C convolutions
# with bias and BN have $3(9C^2 + C + 2C) = 27C^2 + 9C$ parameters; six such F
# and G have $6\,(2 \cdot 9 (C/2)^2 + C/2 + 2 \cdot C/2) = 27C^2 + 9C$ as well
# (with a bias in both convolutions they would have $27C^2 + 12C$). We list the
# project's "Linear block" (two 512-512 layers) as one row, as the project does.

# %%
x1 = torch.randn(1, 3, 32, 32)
vgg, rvgg = vgg19(), rev_vgg()
t_vgg = memory_table(vgg, x2)
t_rvgg = memory_table(rvgg, x2, units=(LinearBlock,))
display(Markdown(t_rvgg.to_markdown(batch=128)))
PROJECT = {
    "vgg_params": 20_565_834,
    "vgg_kept": 638_474,
    "vgg_mb": 311.75,  # the Rev-VGG project's tables
    "rev_params": 20_824_330,
    "rev_kept": 105_482,
    "rev_mb": 51.50,
    "reduction": 83.4,
}
assert (
    count_parameters(vgg) == PROJECT["vgg_params"]
    and count_parameters(rvgg) == PROJECT["rev_params"]
)
assert (
    t_vgg.kept == PROJECT["vgg_kept"]
    and round(t_vgg.kept_bytes(128) / MiB, 2) == PROJECT["vgg_mb"]
)
# The project's row "(128,16,16) Maxpool2d -> (128,8,8)" lists 16,384 activations;
# (128,8,8) is 8,192.
maxpool_2 = [r for r in t_rvgg.rows if r.kind == "MaxPool2d"][1]
assert maxpool_2.output_shape == (128, 8, 8) and maxpool_2.kept == 8_192
assert t_rvgg.kept == PROJECT["rev_kept"] - 8_192
glue("rvgg_kept", t_rvgg.kept, display=False)
glue("rvgg_count_mib", t_rvgg.kept_bytes(128) / MiB, display=False)

# %% [markdown]
# The layer-output count of our VGG-19 is the project's, 638,474 activations per
# image and 311.75 MiB at batch 128, row for row. For Rev-VGG we count
# {glue:text}`rvgg_kept:,` activations ({glue:text}`rvgg_count_mib:.2f` MiB), 8,192
# fewer than the project: its row for the second max pooling, output (128, 8, 8),
# lists 16,384 activations where the tensor has 8,192 elements. With that row
# corrected the project's own total is ours.
#
# Now the measured bytes, and where they differ from the count.

# %%
vgg_mem = t_vgg.measured_at(128)
rvgg_mem = {}
for mode in MODES:
    rvgg.mode = mode
    rvgg_mem[mode] = memory_table(rvgg, x2, units=(LinearBlock,)).measured_at(128)
rvgg.mode = "reversible"
rows = [
    "| | parameters | Rev-VGG project (layer-output count, MB = MiB) "
    "| our layer-output count (MiB) | measured (MiB) |",
    "|---|---:|---:|---:|---:|",
    f"| VGG-19 | {count_parameters(vgg):,} | {PROJECT['vgg_mb']:.2f} "
    f"| {t_vgg.kept_bytes(128) / MiB:.2f} | {vgg_mem / MiB:.2f} |",
]
for mode in MODES:
    quoted = f"{PROJECT['rev_mb']:.2f}" if mode == "reversible" else ""
    count = f"{t_rvgg.kept_bytes(128) / MiB:.2f}" if mode == "reversible" else ""
    rows.append(
        f"| Rev-VGG, mode {mode} | {count_parameters(rvgg):,} "
        f"| {quoted} | {count} | {rvgg_mem[mode] / MiB:.2f} |"
    )
reduction_project = 100 * (
    1 - PROJECT["rev_mb"] / PROJECT["vgg_mb"]
)  # the project's own numbers
reduction_count = 100 * (1 - t_rvgg.kept / t_vgg.kept)
reduction_measured = 100 * (1 - rvgg_mem["reversible"] / vgg_mem)
rows.append(
    f"| reduction | | {reduction_project:.2f}% "
    "(our arithmetic on these MB; the project prints "
    f"{PROJECT['reduction']}%) | {reduction_count:.2f}% | {reduction_measured:.2f}% |"
)
display(Markdown("\n".join(rows)))
assert rvgg_mem["reversible"] < rvgg_mem["checkpoint"] < rvgg_mem["autograd"]
assert 50 < reduction_measured < reduction_count
glue("vgg_measured", vgg_mem / MiB, display=False)
glue("rvgg_measured", rvgg_mem["reversible"] / MiB, display=False)
glue("reduction_measured", reduction_measured, display=False)
glue("reduction_count", reduction_count, display=False)

# %% [markdown]
# Measured, VGG-19 keeps {glue:text}`vgg_measured:.2f` MiB at batch 128 and Rev-VGG
# {glue:text}`rvgg_measured:.2f` MiB: the reversible version cuts the memory by
# {glue:text}`reduction_measured:.1f`%, not by the
# {glue:text}`reduction_count:.1f`% the count promises (the project's 83.4%, with its
# miscounted row). The next section accounts for every byte of the difference.
#
# ## Every difference, accounted for
#
# A layer-output count and autograd agree on much more than it seems, because
# the backward formulas need each layer's *input* and most inputs are the
# previous layer's output:
#
# * a **convolution** saves its input (for the weight gradient); a **linear**
#   layer too;
# * **BatchNorm** saves its input and two vectors of per-channel batch
#   statistics (the mean and the inverse standard deviation);
# * **ReLU** saves its *output* (the sign of the output is the derivative), a new
#   tensor, where the count has folded ReLU into the layer before; in exchange
#   the BatchNorm output before it is not kept by anyone;
# * **max pooling** saves its input and, for each output element, the int64 index
#   of the maximum: twice the bytes of its float32 output;
# * the **logits** are kept by no layer (the loss keeps what it needs);
# * a **reversible chain** keeps its output, which starts the reconstruction.
#
# So per image, measured = count + image + max-pool indices + BatchNorm
# statistics − logits, plus, for Rev-VGG, the RevBlock outputs and the second
# ReLU output of the linear block (the project's row for two layers counts one
# output). The cell checks this to the byte.


# %%
def pool_index_bytes(table):
    return sum(
        8 * table.batch * torch.Size(r.output_shape).numel()
        for r in table.rows
        if r.kind == "MaxPool2d"
    )


def bn_stat_bytes(
    model,
):  # mean and inverse std, float32, per BatchNorm layer that saves them
    return sum(
        2 * 4 * m.num_features
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    )


B, F32 = t_vgg.batch, 4
image = B * 3 * 32 * 32 * F32
logits = B * 10 * F32
vgg_terms = {
    "layer-output count": t_vgg.kept * B * F32,
    "+ input image": image,
    "+ max-pool indices (int64)": pool_index_bytes(t_vgg),
    "+ BatchNorm statistics": bn_stat_bytes(vgg),
    "- logits (kept by nobody)": -logits,
}
assert sum(vgg_terms.values()) == t_vgg.measured_bytes

rev_blocks = [r for r in t_rvgg.rows if r.kind == "RevVGGBlock"]
rvgg_terms = {
    "layer-output count": t_rvgg.kept * B * F32,
    "+ input image": image,
    "+ max-pool indices (int64)": pool_index_bytes(t_rvgg),
    "+ RevBlock outputs (start of the reconstruction)": sum(
        B * F32 * torch.Size(r.output_shape).numel() for r in rev_blocks
    ),
    "+ second hidden output of the linear block": B * 512 * F32,
    "- logits (kept by nobody)": -logits,
}
# BatchNorm inside the RevBlocks saves nothing: the blocks are recomputed in the
# backward.
assert sum(rvgg_terms.values()) == t_rvgg.measured_bytes

rows = [
    "| term (bytes at batch 2) | VGG-19 | Rev-VGG (reversible) |",
    "|---|---:|---:|",
]
for key in dict.fromkeys([*vgg_terms, *rvgg_terms]):
    rows.append(f"| {key} | {vgg_terms.get(key, 0):,} | {rvgg_terms.get(key, 0):,} |")
rows.append(
    f"| **measured** | **{t_vgg.measured_bytes:,}** | **{t_rvgg.measured_bytes:,}** |"
)
display(Markdown("\n".join(rows)))
glue(
    "rvgg_index_share",
    100 * pool_index_bytes(t_rvgg) / t_rvgg.measured_bytes,
    display=False,
)
glue(
    "rvgg_out_share",
    100
    * rvgg_terms["+ RevBlock outputs (start of the reconstruction)"]
    / t_rvgg.measured_bytes,
    display=False,
)

# %% [markdown]
# For Rev-VGG the two largest corrections are the max-pool indices
# ({glue:text}`rvgg_index_share:.0f`% of what it keeps) and the RevBlock outputs
# ({glue:text}`rvgg_out_share:.0f`%): a reversible block keeps nothing *inside*,
# but its output must exist when the backward pass reaches it, and the max pooling
# after it needs that same tensor anyway. The Rev-VGG project's future-work slide
# names the fix for the first: downsampling that loses no information, the
# invertible space-to-depth of i-RevNet {cite:p}`jacobsen2018irevnet`, would make
# the pooling layers reversible too.
#
# The same accounting explains the RevNet rows: a ResNet's count and measurement
# are close because per conv-BN-ReLU the count's {conv output, BN output} and
# autograd's {conv output, ReLU output} are the same size; a RevNet's count misses
# the stage outputs and the stem's ReLU output.
#
# In float32 one more effect is visible in gradients rather than bytes: a
# reconstructed activation equals the stored one only to rounding, and where a
# value lies within rounding of 0 a ReLU can switch the other way in the
# recomputation ({ref}`sec-relu-kink`). That changes one element's gradient; the test suite therefore
# compares the modes exactly in float64 and, in float32, bounds the few parameters
# such a flip touches.
#
# ## Memory against depth
#
# Within one configuration of widths, the memory of a RevNet should not depend
# on the number of units per stage, and a ResNet's should grow linearly. Here
# are both at batch 128: ResNets with widths 16-16-32-64 (as ResNet-32 and -110)
# and $n = 1, \dots, 18$ units per stage, RevNets with widths 32-32-64-112 (as
# RevNet-38) and $n = 1, \dots, 9$, so that both reach depth 110.

# %%
res_units, rev_units = list(range(1, 19)), list(range(1, 10))
# 2 convs per unit, plus stem and classifier
res_depth = [6 * n + 2 for n in res_units]
rev_depth = [12 * n + 2 for n in rev_units]  # 4 convs per unit (F and G)
depth_mem = {
    "ResNet (autograd)": [],
    "RevNet, reversible": [],
    "RevNet, checkpoint": [],
    "RevNet, autograd": [],
}
for n in res_units:
    res = R.PreActNet(
        "basic", (n, n, n), (16, 16, 32, 64), (1, 2, 2), reversible=False
    )
    depth_mem["ResNet (autograd)"].append(memory_table(res, x2).measured_at(128))
for n in rev_units:
    rev = R.PreActNet(
        "basic", (n, n, n), (32, 32, 64, 112), (1, 2, 2), reversible=True
    )
    for mode in MODES:
        rev.mode = mode
        depth_mem[f"RevNet, {mode}"].append(memory_table(rev, x2).measured_at(128))

shown = [
    0,
    2,
    5,
    8,
]  # RevNets with 1, 3, 6, 9 units per stage, ResNets of about the same depth
show_table(
    [
        "depth (ResNet / RevNet)",
        "ResNet, autograd (MiB)",
        *[f"RevNet, {mode} (MiB)" for mode in MODES],
    ],
    [
        [
            f"{res_depth[2 * i + 1]} / {rev_depth[i]}",
            f"{depth_mem['ResNet (autograd)'][2 * i + 1] / MiB:.1f}",
            *[f"{depth_mem[f'RevNet, {mode}'][i] / MiB:.2f}" for mode in MODES],
        ]
        for i in shown
    ],
    caption="Saved for backward at batch 128 (CIFAR 32x32, float32, measured)",
)
assert len(set(depth_mem["RevNet, reversible"])) == 1  # exactly flat
steps = [b - a for a, b in pairwise(depth_mem["ResNet (autograd)"])]
assert len(set(steps)) == 1 and steps[0] > 0  # exactly linear in depth
ckpt_steps = {b - a for a, b in pairwise(depth_mem["RevNet, checkpoint"])}
assert len(ckpt_steps) == 1  # one block input per added block
glue("flat_rev", depth_mem["RevNet, reversible"][0] / MiB, display=False)
glue("res_step", steps[0] / MiB, display=False)

# %% tags=["remove-output"]
fig, ax = plt.subplots(figsize=(6.5, 3.6))
ax.plot(
    res_depth,
    [v / MiB for v in depth_mem["ResNet (autograd)"]],
    "o-",
    color="0.45",
    ms=3,
    label="ResNet, widths 16-16-32-64 (autograd)",
)
for mode, color in [
    ("autograd", "0.75"),
    ("checkpoint", "tab:orange"),
    ("reversible", "tab:blue"),
]:
    ax.plot(
        rev_depth,
        [v / MiB for v in depth_mem[f"RevNet, {mode}"]],
        "s-",
        color=color,
        ms=3,
        label=f"RevNet, widths 32-32-64-112 ({mode})",
    )
ax.set_xlabel("depth (layers)")
ax.set_ylabel("saved for backward, batch 128 (MiB)")
ax.set_title("Saved bytes against depth, CIFAR 32 x 32 (measured)")
ax.legend(fontsize=8)
fig.tight_layout()
glue("fig_bytes_depth", fig, display=False)
plt.show()

# %% [markdown]
# ```{glue:figure} fig_bytes_depth
# :name: fig-bytes-depth
#
# Bytes saved for the backward at batch 128 against depth: the ResNets grow
# linearly, the RevNets in mode `"reversible"` stay flat to the byte, and
# `"checkpoint"` grows by one block input per block.
# ```

# %% [markdown]
# The RevNet in mode `"reversible"` keeps {glue:text}`flat_rev:.2f` MiB at every
# depth, to the byte; the ResNet adds {glue:text}`res_step:.1f` MiB with every unit
# per stage; mode `"checkpoint"` adds one block input per block, and mode
# `"autograd"` everything: the same three behaviours as in
# {numref}`fig-memory-depth`, now for whole CIFAR networks ({numref}`fig-bytes-depth`). The price of the flat
# line is compute, measured next.
#
# ## Time per training step
#
# Counted in arithmetic, a reversible step costs about 4/3 of an ordinary one:
# F and G are evaluated a second time in the backward pass, which itself costs
# about twice a forward ({ref}`ch-backprop`). Measured times also depend on memory
# traffic and on the machine; {cite:t}`gomez2017revnet` expect an overhead
# closer to 50% where a backward costs about as much as a forward.
# {numref}`fig-step-time` in {ref}`ch-backprop` shows the measured ratios of the
# step-time benchmark for a stack of RevNet blocks. For the whole networks of this
# chapter, run `python benchmarks/models.py` from a clone of the repository (on
# Colab: `--device cuda --batch 128`); this chapter prints no timing of its own,
# because a results file recorded before the engine's latest changes would
# describe a different program.
#
# ## CUDA peak memory
#
# The saved bytes above are exact on the CPU that ran this notebook, and they
# depend only on shapes and on what each CPU kernel saves. They were not
# measured on a GPU here, and a GPU can save different tensors: cuDNN's
# BatchNorm saves its own statistics and workspace, and under autocast a
# convolution saves half-precision copies of its inputs, so the same model can
# keep a different number of bytes there. What a GPU actually allocates during
# a step is more still: the parameters, their gradients and
# the optimizer's momentum, the workspace of convolution algorithms, and
# temporaries. With `full_run=True` on a GPU this cell measures the allocator's
# peak during one training step at batch 128 for each model and mode.

# %% tags=["nbval-ignore-output"]
if RUN.full_run:
    # CUDA; the CPU only where REVLIB_REQUIRE_GPU=0 (tests): a code-path check on two
    # models
    device = DEVICE
    batch, models = (128, CIFAR) if device.type == "cuda" else (4, CIFAR[:2])
    xb = torch.randn(batch, 3, 32, 32, device=device)
    yb = torch.randint(0, 10, (batch,), device=device)
    rows = [
        f"| model | mode | {device.type} peak during a step at batch {batch} (MiB) "
        "| saved for backward at batch 128 (MiB) |",
        "|---|---|---:|---:|",
    ]
    for name in models:
        model = getattr(R, name)().to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for mode in MODES if model.reversible else ("autograd",):
            model.mode = mode

            def step(model=model, opt=opt):
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()

            step()  # warm-up: optimizer state, cuDNN plans
            peak = peak_memory_bytes(
                step, device
            )  # None on a CPU: PyTorch has no peak counter there
            shown = "not measured" if peak is None else f"{peak / MiB:.1f}"
            rows.append(
                f"| {LABEL[name]} | {mode} | {shown} | {mem[name, mode] / MiB:.1f} |"
            )
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    display(Markdown("\n".join(rows)))
else:
    print(
        "CUDA peak memory: "
        "not measured (set full_run=True in RunSettings on a machine with a GPU)."
    )

# %% [markdown]
# ## What we learned
#
# * The RevNets and ResNets of Gomez et al. are rebuilt exactly: all eight
#   parameter counts, CIFAR and ImageNet, equal the official code's.
# * In mode `"reversible"` a RevNet keeps its stem, one output per stage and its
#   head: at batch 128, {glue:text}`mem_rev38:.1f` MiB for RevNet-38 and
#   {glue:text}`mem_rev110:.1f` MiB for RevNet-110, against
#   {glue:text}`mem_res32:.0f` and {glue:text}`mem_res110:.0f` MiB for the ResNets of
#   the same size; flat in depth, to the byte.
# * The Rev-VGG project's layer-output count is reproduced exactly for VGG-19 (311.75 MiB)
#   and, with one miscounted row corrected, for Rev-VGG; measured, Rev-VGG saves
#   {glue:text}`reduction_measured:.0f`% rather than 83%, and every byte of the
#   difference is accounted for (pool indices, the RevBlock outputs, BatchNorm
#   statistics, the image).
# * MemCNN's published measurements of the ResNets grow with depth as ours do, a
#   constant factor apart; for the RevNets the factor is not constant (RevNet-164
#   keeps relatively more in MemCNN's table).
#
# ## Exercises
#
# 1. **Counting.** Derive the parameter count of a basic RevNet unit at width
#    $C$ (F and G each BN-ReLU-conv3x3-BN-ReLU-conv3x3 on $C/2$ channels, no
#    conv bias) and of a basic ResNet unit at width $C$. Use it to explain why
#    RevNet-38 needs 3 units per stage and wider stages to match ResNet-32.
#    (Hint: count the weights of one $3 \times 3$ convolution from $C/2$ to $C/2$
#    channels first.)
# 2. **Code change.** Give the Rev-VGG couplings a bias in *both* convolutions of
#    F and G and count the parameters with `count_parameters`. Check the
#    difference against $27C^2 + 12C - (27C^2 + 9C)$ summed over the four blocks.
# 3. **Experiment.** Replace the stride-2 transitions of a small RevNet by an
#    invertible space-to-depth (pixel unshuffle, `nn.PixelUnshuffle(2)`) followed
#    by a reversible unit, and measure with `memory_table` what it keeps in mode
#    `"reversible"`. What still has to be stored?
# 4. **Experiment.** `memory_table` predicts the bytes at batch 128 from a
#    batch of 2 through $aN + b$. Which layers contribute to $b$? Switch all
#    BatchNorm layers to `eval()` and verify that $b$ becomes 0.
# 5. **Reading.** Relative to its RevNet-110, MemCNN's RevNet-164 keeps a
#    larger factor than ours does (the MemCNN table above). List the tensors a
#    RevNet-164 keeps in mode `"reversible"` and propose what MemCNN's
#    measurement may count in addition.
#
# ## Solutions
#
# Each solution is folded; open it after trying the exercise. Where a solution
# has a number, the folded code cell above it computes and checks it.


# %% tags=["hide-cell"]
def preact_half_unit(c: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1, bias=False),
    )


unit_rows = []
for C in (16, 32, 64, 112, 128):
    rev_unit = revlib.AdditiveCoupling(
        preact_half_unit(C // 2), preact_half_unit(C // 2)
    )
    res_unit = preact_half_unit(C)  # a ResNet unit: the same layers on all C channels
    assert (
        count_parameters(rev_unit) == 9 * C**2 + 4 * C
        and count_parameters(res_unit) == 18 * C**2 + 4 * C
    )
    unit_rows.append((C, count_parameters(res_unit), count_parameters(rev_unit)))
show_table(
    ["width C", "ResNet unit: 18C^2 + 4C", "RevNet unit: 9C^2 + 4C"],
    [[C, f"{a:,}", f"{b:,}"] for C, a, b in unit_rows],
)
stage_weights = {
    "ResNet-32, 5 units at 16-32-64": sum(5 * 18 * C**2 for C in (16, 32, 64)),
    "RevNet-38, 3 units at 32-64-112": sum(3 * 9 * C**2 for C in (32, 64, 112)),
}
print(", ".join(f"{k}: {v:,} convolution weights" for k, v in stage_weights.items()))
assert (
    0.9
    < stage_weights["RevNet-38, 3 units at 32-64-112"]
    / stage_weights["ResNet-32, 5 units at 16-32-64"]
    < 1.3
)

# %% [markdown]
# ```{admonition} Solution 1 (parameters of a unit)
# :class: dropdown
#
# A RevNet unit at width $C$ has F and G, each with two $3 \times 3$ convolutions
# from $C/2$ to $C/2$ channels, $4 \cdot 9 (C/2)^2 = 9C^2$ weights, and four
# BatchNorms of $C/2$ channels with a scale and a shift, $4C$: $9C^2 + 4C$. A
# basic ResNet unit has two $C$-to-$C$ convolutions, $18C^2$, and two BatchNorms,
# $4C$: twice the weights at the same width (the folded cell checks both formulas
# with `count_parameters`). To have as many parameters, RevNet-38 widens its
# stages (32-64-112 instead of 16-32-64: 2, 2 and 1.75 times), which
# more than compensates the halving, and then needs fewer units (3 instead of 5)
# to land near ResNet-32's count: $3 \cdot 9 \cdot (32^2 + 64^2 + 112^2)$ against
# $5 \cdot 18 \cdot (16^2 + 32^2 + 64^2)$ convolution weights.
# ```


# %% tags=["hide-cell"]
def with_bias_everywhere(model: nn.Module) -> nn.Module:
    """A copy of `model` in which every bias-free convolution inside a coupling gets a
    bias."""
    model = copy.deepcopy(model)
    for coupling in [
        m for m in model.modules() if isinstance(m, revlib.AdditiveCoupling)
    ]:
        for fn in (coupling.F, coupling.G):
            for i, layer in enumerate(fn):
                if isinstance(layer, nn.Conv2d) and layer.bias is None:
                    fn[i] = nn.Conv2d(
                        layer.in_channels, layer.out_channels, 3, padding=1, bias=True
                    )
    return model


extra_bias = count_parameters(with_bias_everywhere(rev_vgg())) - count_parameters(
    rev_vgg()
)
predicted_extra = sum(
    (27 * C**2 + 12 * C) - (27 * C**2 + 9 * C) for C in (128, 256, 512, 512)
)
print(
    f"biases added: {extra_bias:,}; "
    f"3C summed over the four RevBlocks: {predicted_extra:,}"
)
assert extra_bias == predicted_extra

# %% [markdown]
# ```{admonition} Solution 2 (a bias in both convolutions)
# :class: dropdown
#
# Each RevBlock has three couplings with two functions each, and each function
# gains $C/2$ biases: $3 \cdot 2 \cdot C/2 = 3C$ per block, the difference
# $27C^2 + 12C - (27C^2 + 9C)$. Over $C = 128, 256, 512, 512$ that is
# $3 \cdot 1408 = 4{,}224$ parameters, which the folded cell counts. With them the
# design no longer has the project's per-block counts, which is how the count
# pins down where the biases are.
# ```

# %% tags=["hide-cell"]
from revlib.core.downsampling import SpaceToDepth  # noqa: E402


def s2d_chain(units: int = 2, width: int = 16) -> revlib.ReversibleSequence:
    blocks, c = [], width
    for stage in range(3):
        blocks += [
            revlib.AdditiveCoupling(
                preact_half_unit(c // 2), preact_half_unit(c // 2)
            )
            for _ in range(units)
        ]
        if stage < 2:
            # invertible: 4x the channels, half the side
            blocks.append(SpaceToDepth(2))
            c *= 4
    return revlib.ReversibleSequence(blocks)


stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False))
head = nn.Sequential(
    nn.BatchNorm2d(256),
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(256, 10),
)
s2d_net = nn.Sequential(stem, s2d_chain(), head)
x_s2d = torch.randn(2, 3, 32, 32)
with torch.no_grad():
    chain_out = s2d_net[1](stem(x_s2d))
s2d_bytes = saved_tensor_bytes(s2d_net, x_s2d)
stem_in, out_bytes = x_s2d.numel() * 4, chain_out.numel() * 4
head_bytes = saved_tensor_bytes(head, chain_out.clone().requires_grad_(True))
print(
    f"saved: {s2d_bytes:,} bytes = stem input {stem_in:,} "
    f"+ head {head_bytes:,}, of which {out_bytes:,} are the "
    f"chain's output (the head's BatchNorm input, kept once)"
)
assert s2d_bytes == stem_in + head_bytes

# %% [markdown]
# ```{admonition} Solution 3 (space-to-depth transitions)
# :class: dropdown
#
# With `SpaceToDepth(2)` (a pixel unshuffle, which only moves numbers) as the
# transition, the whole body from the stem to the head is one reversible chain:
# no transition keeps its input any more. What still has to be stored is what is
# not invertible: the stem's input (the image, for the stem's weight gradient),
# the chain's output, and the head's own saved tensors (its BatchNorm, which
# reads the chain's output, so that tensor is kept once for both, the pooling,
# the classifier's input). The folded cell measures exactly that sum. The price is width: each transition multiplies
# the channels by 4 where RevNet doubles them, which is the i-RevNet's design in
# {ref}`ch-beyond`.
# ```

# %% tags=["hide-cell"]
fixed = {}
for state in ("train", "eval"):
    model = R.revnet38()
    model.mode = "autograd"
    model.train(state == "train")
    fixed[state] = memory_table(model, x2).fixed_bytes
n_bn_channels = sum(
    m.num_features for m in R.revnet38().modules() if isinstance(m, nn.BatchNorm2d)
)
print(
    "b (fixed_bytes) of RevNet-38 in mode autograd: "
    f"train {fixed['train']:,} bytes, eval {fixed['eval']:,} bytes; "
    f"2 x 4 bytes x {n_bn_channels:,} BatchNorm channels = {8 * n_bn_channels:,}"
)
assert fixed["train"] == 8 * n_bn_channels and fixed["eval"] == 0

# %% [markdown]
# ```{admonition} Solution 4 (what does not grow with the batch)
# :class: dropdown
#
# The constant $b$ comes from BatchNorm only: in training mode each BatchNorm
# saves its batch mean and inverse standard deviation, one float32 each per
# channel, whatever the batch. The folded cell finds $b = 8$ bytes times the
# number of BatchNorm channels of RevNet-38 (mode `"autograd"`, where every layer
# saves). In `eval()` BatchNorm normalises with its running statistics, which are
# buffers, not saved activations, and $b$ becomes 0.
# ```
#
# ```{admonition} Solution 5 (what MemCNN may count)
# :class: dropdown
#
# In mode `"reversible"` our RevNet-164 keeps: the image (the stem's input), the
# stem's output, for each stage the input of its first, non-reversible unit
# (which downsamples and widens) and the output of its reversible chain, and the
# head's tensors. Its stages are bottleneck stages four times wider than listed
# (128, 256, 512 channels), so these few tensors are large, which is why RevNet-164
# keeps more than RevNet-110 at all. MemCNN's larger ratio
# ({glue:text}`memcnn_rev164_to_110:.1f` against our
# {glue:text}`ours_rev164_to_110:.1f`) would follow if its measurement also held
# the internals of the downsampling units, which run with ordinary autograd
# (a bottleneck unit saves several wide tensors), or a peak that includes one
# unit's recomputation during the backward, or the allocator's cached blocks.
# MemCNN's README does not say which; we cannot check it without its script.
# ```
