# %% [markdown]
# (app-peers)=
# # Appendix: revlib among its peers, measured side by side
#
# revlib is not the first library for reversible networks in PyTorch. MemCNN
# {cite}`leemput2019memcnn` wraps any module that has an inverse and reconstructs its
# input in the backward pass; RevTorch {cite}`revtorch` builds RevNet blocks from two
# sub-networks; the `revlib` on PyPI {cite}`revlib_pypi`, HomebrewNLP's, which has
# the same import name as this one, adds coupling functions, memory modes and
# parameter offloading; FrEIA {cite}`ardizzone2018freia` builds invertible networks
# for normalising flows. And `torch.utils.checkpoint` {cite}`chen2016checkpoint`
# saves memory without any inverse at all.
#
# A reader choosing among them needs two things that no README gives: whether each
# one computes the gradient that plain autograd would, in the situations a real
# network puts it in ({ref}`app-engine` lists what a recomputation must replay),
# and what each costs in time and memory on the same model. This appendix builds
# one model, a stack of additive couplings $y_1 = x_1 + F(x_2)$,
# $y_2 = x_2 + G(y_1)$, in each library around the *same* modules $F$ and $G$,
# and measures all of them against plain autograd, side by side. Every statement
# below about a library is either measured on this page or read from its source at
# the pinned version; the harness is `revlib.harness.peers` (the checks:
# `revlib.harness.peer_checks`), the timing `benchmarks/peers.py`.

# %%
# The peers, at the versions this page was measured with. On Colab they are
# installed here; elsewhere they come from the book's requirements.txt. Without
# their dependencies: MemCNN's (SimpleITK, tqdm, ...) serve its training scripts,
# not the modules used here, and FrEIA's (numpy, scipy, torch) are there already.
import importlib.metadata
import subprocess
import sys

from revlib.harness.peers import PINNED

WANTED = {name: v for name, v in PINNED.items() if name != "revlib"}


def installed(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


absent = [f"{n}=={v}" for n, v in WANTED.items() if installed(n) != v]
if absent:
    if "google.colab" not in sys.modules:
        raise ImportError(
            f"this page needs {' '.join(absent)}: in a checkout of the book run  "
            "pip install -r requirements.txt  (or pip install --no-deps "
            + " ".join(absent)
            + ")"
        )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *absent],
        check=True,
    )
    importlib.invalidate_caches()
# PyPI's revlib shares this revlib's import name: revlib.harness.peers installs it
# into a folder of its own and loads its one module under another name.
print("peers:", ", ".join(f"{n} {installed(n)}" for n in WANTED))

# %%
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from revlib.core.device import synchronize
from revlib.core.memory import MiB, saved_tensor_bytes
from revlib.harness import peer_checks, peers
from revlib.harness.figures import show_table
from revlib.harness.notebook import RunSettings, glue, peak_memory_bytes

# Set full_run=True on a GPU (e.g. Colab) to time and measure the memory-saving
# methods there too (the last section).
RUN = RunSettings.from_env(full_run=False)
torch.set_num_threads(1)  # float64 results identical from run to run
_ = torch.manual_seed(0)

# %% [markdown]
# ## The contenders
#
# `revlib.harness.peers.build` wraps the same $F$ and $G$ objects in each library,
# so gradients and buffers are read from the same modules whatever a library calls
# them. Where a library has a switch for random layers, it is on, as it would be for
# a user with dropout. Plain autograd is the reference; FrEIA saves no memory (its
# backward is autograd's) and is here for its couplings, as a second reference that
# goes through a library's own modules.

# %%
LIBS = list(peers.LIBRARIES)
REASON = {key: peers.missing(key) for key in LIBS}  # None: available here
show_table(  # each library's name links to its repository
    ["library", "what this page builds"],
    [
        [f"[{p.label}]({p.url})" if p.url else p.label, f"`{p.settings}`"]
        for p in peers.PEERS.values()
    ],
)
for key, reason in REASON.items():
    if reason is not None:
        print(f"{peers.PEERS[key].label}: left out here ({reason})")

# %% [markdown]
# ## What each library offers, from its source
#
# The rows that a check can settle are measured in the next section; these tables
# say what the code at the pinned version does, read from it.
#
# |  | revlib | `torch.utils.checkpoint` | MemCNN 1.5.2 |
# |---|---|---|---|
# | saves memory by | inverting each block in the backward | keeping each block's input, recomputing the block | inverting each wrapped module |
# | blocks | any `ReversibleBlock` (a forward and its inverse) | any module | any module with an `inverse` |
# | couplings shipped | additive, NICE, affine, Hamiltonian, midpoint, leapfrog, momentum | none needed | additive, affine |
# | BatchNorm's running statistics | updated once (the replay leaves them) | updated again by the recomputation | updated again by the inverse and by the recomputation |
# | random layers | generator states replayed for each call that drew (default) | generator states replayed (default) | `preserve_rng_state` (off by default) restores the state for the inverse only |
# | hooks on modules inside $F$ | run once per step, again in the replay only if they change the output | run again in the recomputation | run again in the inverse and in the recomputation |
# | conditioning, extras | keywords reach every $F$ and $G$ that takes them, with gradients | any arguments | several inputs to the wrapped module |
# | data parallel | DDP and FSDP2, tested in the repository's suite | PyTorch's own | weights are inputs of its autograd function, so their gradients reach autograd like any layer's (not run here) |
# | memory options | a mode per sequence (`"autograd"`, `"reversible"`, `"checkpoint"`); a `memory_budget`, spent on the blocks that spare the most recomputation per byte | selective checkpointing policies; `torch.compile`'s activation memory budget | `keep_input` per wrapper; `disable` |
#
# |  | RevTorch 0.2.4 | PyPI revlib 1.7.2 | FrEIA 0.2 |
# |---|---|---|---|
# | saves memory by | inverting each block | inverting each half-step | nothing (autograd) |
# | blocks | $F$, $G$ of an additive coupling only | any module, as the $f$ of $y_0 = x_0 + f(x_1)$ | any `InvertibleModule` |
# | couplings shipped | additive | additive; coupling functions replaceable (e.g. momentum) | NICE, Real NVP, GLOW, GIN, all-in-one, ... |
# | BatchNorm's running statistics | updated again by the recomputation | updated again by the recomputation | updated once |
# | random layers | `fix_random_seed` (off by default) reseeds torch from Python's `random` before each $F$ and $G$ | the CPU (and CUDA) state restored for the recomputation | nothing to replay |
# | hooks on modules inside $F$ | run again in the recomputation | run again in the recomputation | run once |
# | conditioning, extras | none | `*args, **kwargs` to every module | conditions concatenated to the sub-networks' input |
# | data parallel | gradients of $F$, $G$ set by a nested `backward()` inside its backward (not run here) | gradients by a nested `torch.autograd.backward` inside its backward (not run here) | autograd |
# | memory options | `eagerly_discard_variables` | four memory modes; parameter offload (`target_device`); an optimizer step fused into the backward | none |
#
# Two consequences of the sources are worth stating before the measurements. RevTorch
# and PyPI's revlib call their `autograd.Function` with the activations only, not the
# weights of $F$ and $G$, and accumulate the weights' gradients by a nested backward:
# when no input of that function requires grad (the stack is the network's first
# layer), autograd never calls their backward, and $F$ and $G$ get no gradient. And
# RevTorch's `fix_random_seed=True` calls `torch.manual_seed` with a seed drawn from
# Python's `random` before every $F$ and $G$, so the masks differ from those a plain
# network would draw, and every later random draw of the program (data shuffling,
# augmentation) depends on it.

# %% [markdown]
# ## Correctness: each library against plain autograd
#
# Each case below builds a three-block stack on a $4 \times 8 \times 6 \times 6$
# input in float64 (the autocast case in float32), takes one training step from the
# same weights, input and random state as plain autograd, and compares the gradients
# of every parameter of $F$ and $G$ (relative to the largest, at $10^{-9}$; under
# autocast at $10^{-3}$, far below the $10^{-2}$ that separates a bfloat16 from a
# float32 computation), and whatever else the case names:
#
# - **plain stack**: $F, G$ = conv-ReLU-conv; the input's gradient too;
# - **BatchNorm (train)**: $F, G$ = BN-ReLU-conv-BN-ReLU-conv of the benchmark; the
#   running statistics and the batch counter after the step;
# - **dropout**: conv-ReLU-dropout(0.3)-conv, every generator seeded identically; when
#   the gradients differ, a central difference of the library's own loss (drawing the
#   same numbers at every evaluation) says whether they are at least the gradient of
#   the masks its forward drew;
# - **forward hook in F**: two hooks on $F$'s first convolution, one that scales its
#   output (it changes $F$) and one that counts its calls (an observer, as a logger is);
#   the observer must run as often as under autograd;
# - **input without grad**: the stack as a network's first layer, followed by a
#   $1 \times 1$ convolution; do $F$ and $G$ get their gradients?
# - **autocast bf16 (CPU)**: the forward under `torch.autocast("cpu", torch.bfloat16)`,
#   the backward outside it, as usual;
# - **torch.compile**: `torch.compile(model, backend="aot_eager")` (Dynamo and AOT
#   autograd, without Inductor's code generation, which adds minutes of C++
#   compilation here and no new semantics); the graph breaks are counted.
#
# A verdict is `pass`, `fail` (with what differs), `error` (what was raised), or
# `n/a` (with the reason, e.g. a library that could not be installed).

# %%
verdicts = peer_checks.check_all(LIBS[1:])
MARK = {"pass": "✓", "fail": "✗", "error": "error", "n/a": "n/a"}
show_table(
    ["case", *(peers.PEERS[k].label for k in LIBS[1:])],
    [
        [case.title, *(MARK[verdicts[k][c].status] for k in LIBS[1:])]
        for c, case in peer_checks.CASES.items()
    ],
    caption="One training step against plain autograd (✓ pass, ✗ fail)",
)
for key in LIBS[1:]:
    for c, verdict in verdicts[key].items():
        if verdict.detail and verdict.status != "n/a":
            print(
                f"{peers.PEERS[key].label}, {peer_checks.CASES[c].title}: {verdict}"
            )


# %%
def status(key, case):
    return verdicts[key][case].status


def detail(key, case):
    return verdicts[key][case].detail


# revlib and the autograd-based FrEIA pass everything
assert all(
    status(k, c) == "pass" for k in ("revlib", "freia") for c in peer_checks.CASES
)
# plain checkpointing: random numbers replayed, statistics and hooks not
assert status("checkpoint", "dropout") == "pass"
assert detail("checkpoint", "batchnorm") == "BatchNorm counted 2 batches, autograd 1"
assert "ran 2x per block" in detail("checkpoint", "hook")
if REASON["memcnn"] is None:
    assert detail("memcnn", "plain") == "the input's gradient differs (2x autograd's)"
    assert "counted 3 batches" in detail("memcnn", "batchnorm")
    assert "not even the gradient of the masks" in detail("memcnn", "dropout")
    assert "ran 3x per block" in detail("memcnn", "hook")
    assert status("memcnn", "first_layer") == "pass"
if REASON["revtorch"] is None:
    assert "but they are the gradient of the masks" in detail("revtorch", "dropout")
    assert detail("revtorch", "first_layer").endswith("got no gradient")
if REASON["revlib_pypi"] is None:
    assert status("revlib_pypi", "dropout") == "pass"
    assert detail("revlib_pypi", "first_layer").endswith("got no gradient")
for key in ("memcnn", "revtorch", "revlib_pypi"):
    if REASON[key] is None:
        assert status(key, "autocast") == "fail"
        assert status(key, "compile") == "pass"

# %% [markdown]
# What the table shows, with the mechanism each time read from the source:
#
# - **BatchNorm.** Every library that recomputes $F$ and $G$ in train mode updates
#   the running statistics again: twice per step for checkpointing, RevTorch and PyPI's
#   revlib, three times for MemCNN, whose inverse and recomputation both run $F$ and
#   $G$. The gradients are right (the batch statistics are recomputed from the same
#   batch), but the running mean and variance, and so the network at evaluation
#   time, drift from autograd's. revlib's replay leaves them as the forward left them
#   ({ref}`ch-backprop`).
# - **Dropout.** Checkpointing and PyPI's revlib restore the generator state before
#   the recomputation and pass. MemCNN restores it before the inverse, which runs $G$
#   first, so $G$ draws $F$'s numbers, and the recomputation runs outside the restored
#   state: its gradients are not those of the masks its forward drew. RevTorch's gradients are correct
#   for the masks it drew, but those are not the masks of the same seed without it.
# - **Hooks.** A hook that changes $F$ is part of $F$ and is rerun by everyone, as it
#   must be. An observer runs twice per step under checkpointing, RevTorch and PyPI's
#   revlib and three times under MemCNN: a hook that logs activation statistics, or
#   collects features, sees each batch more than once.
# - **The input's gradient.** MemCNN sets `.grad` of its function's inputs inside its
#   backward and returns the same gradient to autograd, which adds it: a leaf input
#   that requires grad (an adversarial example, a saliency map) gets twice its
#   gradient. The parameters' gradients are right.
# - **Input without grad.** RevTorch and PyPI's revlib give $F$ and $G$ no gradient
#   at all, silently when something after the stack has parameters: the reason is in
#   the previous section.
# - **Autocast.** MemCNN, RevTorch and PyPI's revlib recompute $F$ and $G$ in the
#   backward outside the forward's autocast region (MemCNN's `custom_fwd` restores
#   only CUDA's autocast state), so the recomputation runs in float32 and the
#   gradients are those of a different function. Checkpointing and revlib record the
#   autocast state and recompute under it.
# - **torch.compile.** Every library gives autograd's gradients under `aot_eager`;
#   the graph breaks are where Dynamo stops tracing and hands control back to Python:
#   at revlib's engine (which runs eagerly and compiles $F$ and $G$ itself,
#   {ref}`app-engine`), at MemCNN's and PyPI's revlib's calls of
#   `torch.get_rng_state` and at RevTorch's of `torch.manual_seed`, functions that
#   Dynamo does not trace.

# %% [markdown]
# ## Memory: what one forward leaves for the backward
#
# Saved-tensor hooks (`revlib.core.memory.saved_tensor_bytes`, used in the other
# chapters) see what `save_for_backward` and PyTorch's operations save. MemCNN and
# RevTorch keep their tensors as attributes of their autograd node instead, where
# the hooks cannot see them. So the count below is the CPU allocator's own:
# `peers.held_bytes` sums the profiler's memory events over one forward, which gives
# the bytes allocated during the call and still allocated when it returns (the
# output included), however they are held. Bytes are exact and do not depend on the
# machine's load, so they are measured here, on the benchmark's blocks at a small
# size, at two depths; the difference is what each extra block costs.

# %%
WIDTH, BATCH, SIZE = 16, 4, 16
x = torch.randn(BATCH, WIDTH, SIZE, SIZE, requires_grad=True)
block_io = x.numel() * x.element_size()  # one block's input or output
available = [k for k in LIBS if REASON[k] is None]


def held_and_hooks(key, depth):
    torch.manual_seed(0)
    pairs = [
        (peers.preact_half(WIDTH // 2), peers.preact_half(WIDTH // 2))
        for _ in range(depth)
    ]
    model = peers.build(key, pairs, (WIDTH, SIZE, SIZE)).train()
    hooks = saved_tensor_bytes(model, x.detach().clone().requires_grad_())
    return peers.held_bytes(model, x), hooks


DEPTHS = (2, 6)
memory = {k: {d: held_and_hooks(k, d) for d in DEPTHS} for k in available}
per_block = {
    k: (m[DEPTHS[1]][0] - m[DEPTHS[0]][0]) / (DEPTHS[1] - DEPTHS[0])
    for k, m in memory.items()
}
show_table(
    [
        "library",
        f"held, {DEPTHS[0]} blocks",
        f"held, {DEPTHS[1]} blocks",
        "per extra block",
        f"hooks see, {DEPTHS[1]} blocks",
    ],
    [
        [
            peers.PEERS[k].label,
            *(f"{memory[k][d][0] / block_io:.2f}" for d in DEPTHS),
            f"{per_block[k] / block_io:.2f}",
            f"{memory[k][DEPTHS[1]][1] / block_io:.2f}",
        ]
        for k in available
    ],
    caption=f"Bytes after one forward, in units of one block's input "
    f"({block_io / 1024:.0f} KiB: batch {BATCH}, {WIDTH} channels, {SIZE}x{SIZE})",
)

# %%
rng_state = torch.get_rng_state().numel()  # bytes of one CPU generator state
glue("peer_autograd_per_block", per_block["autograd"] / block_io, display=False)
glue("peer_checkpoint_per_block", per_block["checkpoint"] / block_io, display=False)
glue("peer_rng_state_bytes", rng_state, display=False)
# revlib and RevTorch keep the output and nothing per block (revlib: a few bytes)
assert per_block["revlib"] < 64 and per_block["revtorch"] == 0
assert memory["revlib"][6][0] - block_io < 64
# checkpointing keeps each block's input and, for the replay, one generator state
assert per_block["checkpoint"] == block_io + rng_state
if "memcnn" in available:  # no input kept: one generator state per block
    assert per_block["memcnn"] == rng_state
    assert memory["memcnn"][6][1] == 0  # invisible to saved-tensor hooks
if "revlib_pypi" in available:  # one generator state per half-step
    assert per_block["revlib_pypi"] == 2 * rng_state
assert (
    per_block["autograd"] > 4 * block_io
    and per_block["freia"] == per_block["autograd"]
)

# %% [markdown]
# Autograd keeps about {glue:text}`peer_autograd_per_block:.1f` block inputs' worth
# of activations per block (what the BatchNorms, ReLUs and convolutions of $F$ and $G$
# save, each half a block input wide); checkpointing keeps one, the block's input, plus the
# {glue:text}`peer_rng_state_bytes`-byte generator state it saves to replay random
# numbers; the reversible libraries keep the output and nothing that grows with depth,
# except MemCNN's generator state per block (saved because `preserve_rng_state=True`;
# it is off by default) and PyPI's revlib's per half-step. The saved-tensor hooks see
# all of it for autograd, FrEIA and revlib, all but the generator states for
# checkpointing, part of it for PyPI's revlib, and none of it for MemCNN and
# RevTorch: a memory comparison by hooks alone would flatter the last three.
#
# All of them need one more thing in the backward that this table does not show: the
# activations of the one block being recomputed, autograd's per-block bytes, for the
# time of its backward step. That peak is the same for every method that recomputes.

# %% [markdown]
# ## Time: one training step, interleaved
#
# Step times depend on the machine and on what else it runs, so this page times
# nothing itself. `benchmarks/peers.py` times one training step (forward, backward of
# mean$(y^2)$, SGD with momentum) of the benchmark's stack (9 blocks, 32 channels,
# batch 32, $32 \times 32$) in every library, interleaved in a rotating order after
# warm-up steps, on one thread, and writes `benchmarks/results/peers_cpu.json` only
# when no other process used more than a fifth of a core during the run
# (`benchmarks/common.py`): a result taken under load is not a result. The table
# below is read from that file when it exists.

# %%
peer_file = Path("..") / "benchmarks" / "results" / "peers_cpu.json"
bench = json.loads(peer_file.read_text()) if peer_file.exists() else None
if bench is None:
    print(
        "No timing yet: benchmarks/results/peers_cpu.json is written by\n"
        "  OMP_NUM_THREADS=1 python benchmarks/peers.py --threads 1\n"
        "on an idle machine (it refuses to write one under load)."
    )
else:
    times = bench["all_seconds"]
    show_table(
        [
            "library",
            "median step (ms)",
            "/ autograd (95% interval)",
            "CPU time ratio",
            "held after the forward (MiB)",
        ],
        [
            [
                bench["labels"][k],
                f"{1000 * statistics.median(times[k]):.0f}",
                "{:.2f} ({:.2f}-{:.2f})".format(
                    bench["paired_ratio_to_autograd"][k],
                    *bench["paired_ratio_95_interval"][k],
                ),
                f"{bench['cpu_time_ratio_to_autograd'][k]:.2f}",
                f"{bench['held_bytes_after_forward'][k] / MiB:.1f}",
            ]
            for k in bench["variants"]
        ],
        caption=f"{bench['device']}, torch {bench['torch']}, {bench['threads']} "
        f"thread(s), {bench['date_utc'][:10]}: median of {bench['repeats']} steps",
    )
    assert bench["load"]["override"] is False
    ratio = bench["paired_ratio_to_autograd"]
    glue("peer_ratio_revlib", ratio["revlib"], display=False)
    glue("peer_ratio_pypi", ratio["revlib_pypi"], display=False)
    glue("peer_ratio_checkpoint", ratio["checkpoint"], display=False)
    # the claims of the next paragraph, checked on the file
    fastest = min(("revlib", "revtorch", "revlib_pypi", "memcnn"), key=ratio.get)
    assert fastest == "revlib_pypi"
    assert bench["paired_ratio_95_interval"]["revlib_pypi"][1] < min(
        bench["paired_ratio_95_interval"][k][0] for k in ("revlib", "revtorch")
    )
    assert ratio["checkpoint"] < min(
        ratio[k] for k in ("revlib", "revtorch", "memcnn")
    )

# %% [markdown]
# On this CPU the fastest of the methods that store no activations is PyPI's revlib
# ({glue:text}`peer_ratio_pypi:.2f` times autograd, this library
# {glue:text}`peer_ratio_revlib:.2f`, with intervals that do not overlap), and
# checkpointing each block ({glue:text}`peer_ratio_checkpoint:.2f`) beats all the
# reversible ones except PyPI's revlib. Two things in PyPI's revlib's design are
# cheaper: it carries the two halves between blocks as two tensors, so no block
# concatenates them and every $F$ reads a contiguous half, where revlib (like
# autograd's stack here) passes one tensor and splits it; and its backward keeps
# less: it restores the CPU random state, but not what turns the rest of its
# column of the correctness table into "pass" (the BatchNorm statistics, the hooks,
# autocast in the replay). The first could be adopted without giving up the second;
# it is an open item of revlib's engine.

# %% [markdown]
# ## Which method when
#
# The methods trade time for memory differently, and they combine. With $a$ the bytes
# autograd keeps per block and $x$ one block's input (on these blocks
# $a \approx$ {glue:text}`peer_autograd_per_block:.1f` $x$), a stack of $L$ blocks
# keeps, besides the one block being recomputed:
#
# | method | kept for the backward | extra compute per step | correct for |
# |---|---|---|---|
# | autograd | $L a$ | none | everything |
# | mixed precision (autocast) | $L a$ less what the layers run in 16 bits save in 16 bits | none; faster where the hardware has 16-bit units | everything, at 16-bit rounding |
# | offloading (`torch.autograd.graph.save_on_cpu`) | $L a$ in host memory, not on the device | the copies over the bus, overlapped with compute at best | everything |
# | checkpointing, per block | $L x$ | one forward of $F$ and $G$ | anything; BatchNorm statistics and hooks see the recomputation (revlib's mode `"checkpoint"` updates the statistics once) |
# | reversible | $x$ | one forward of $F$ and $G$, plus the inverse's additions | invertible blocks; with revlib, everything in the table above |
#
# The last column is where the libraries differ. The crossovers on this machine:

# %%
step_file = Path("..") / "benchmarks" / "results" / "step_time_cpu.json"
step = json.loads(step_file.read_text()) if step_file.exists() else None
a = per_block["autograd"] / block_io  # in units of one block's input
c = per_block["checkpoint"] / block_io
print(
    f"per block: autograd keeps {a:.1f} x, checkpointing {c:.2f} x, reversible 0 x "
    "(one x in all)"
)
# the same blocks under CPU autocast to bfloat16: what mixed precision keeps
torch.manual_seed(0)
halves = [
    (peers.preact_half(WIDTH // 2), peers.preact_half(WIDTH // 2)) for _ in range(2)
]
plain = peers.build("autograd", halves, (WIDTH, SIZE, SIZE)).train()
with torch.autocast("cpu", dtype=torch.bfloat16):
    bf16_bytes = saved_tensor_bytes(plain, x)
fp32_bytes = saved_tensor_bytes(plain, x)
print(f"autocast to bfloat16 keeps {bf16_bytes / fp32_bytes:.2f} of float32's bytes")
glue("peer_bf16_fraction", bf16_bytes / fp32_bytes, display=False)
assert bf16_bytes < fp32_bytes
budget_blocks = {"autograd": 1 / a, "checkpoint": 1 / c}
print(
    f"in a budget of B block inputs: autograd fits {budget_blocks['autograd']:.3f} B "
    f"blocks, checkpointing {budget_blocks['checkpoint']:.2f} B, reversible any depth"
)
if step is not None:
    r = step["ratio_to_autograd"]
    print(
        f"step time / autograd ({step['device']}, {step['threads']} thread(s), "
        f"{step['date_utc'][:10]}): checkpoint {r['checkpoint']:.2f}, "
        f"reversible {r['reversible']:.2f}, autograd + one forward "
        f"{r['autograd_plus_forward']:.2f}"
    )
    glue("peer_time_checkpoint", r["checkpoint"], display=False)
    glue("peer_time_reversible", r["reversible"], display=False)
    # point 2 below: each pays one recomputed forward; neither is 10 % dearer
    assert abs(r["checkpoint"] - r["reversible"]) < 0.1
    assert min(r["checkpoint"], r["reversible"]) > 1.2

# %% [markdown]
# Read as a decision, for a stack that does not fit in memory with autograd:
#
# 1. **Mixed precision first** where the hardware has 16-bit units (every recent
#    GPU), for its speed more than its memory: what it saves depends on which layers
#    the autocast lists run in 16 bits, and for these blocks under CPU autocast it
#    keeps {glue:text}`peer_bf16_fraction:.2f` of float32's bytes. It does not
#    change how memory grows with depth.
# 2. **Checkpointing** when $L x$ fits: it recomputes the same forward a reversible
#    step does and needs no inverse, so it takes any block. Its step costs
#    {glue:text}`peer_time_checkpoint:.2f` times autograd's against
#    {glue:text}`peer_time_reversible:.2f` for revlib's reversible mode in the
#    step-time benchmark of {ref}`ch-backprop` (on the CPU printed above): the same
#    price within that benchmark's run-to-run scatter, one recomputed forward each.
# 3. **Reversible blocks** when even $L x$ does not fit, or when the batch or the
#    resolution is what must grow: memory flat in depth, for about checkpointing's
#    step time. The depth at which a fixed budget $B$ forces the switch is
#    $B / x$ blocks, against $B / a$ for autograd. Between the two, revlib's
#    `memory_budget` mixes them block by block: the blocks that spare the most
#    recomputation per byte keep their activations while they fit, and the rest run
#    reversibly (`benchmarks/budget.py` times it against checkpointing).
# 4. **Offloading** when the device is the bottleneck and the bus is idle: it keeps
#    autograd's gradients with no recomputation, at the price of the copies. On a CPU
#    there is nothing to offload to, so this page cannot measure it; the GPU run
#    below does.
#
# The methods compose: checkpointing or reversible blocks run under autocast too
# (revlib and checkpointing with the right gradients, the table above says which
# others). Whichever library does the recomputing, the correctness table above is the
# list of what to check before trusting it with BatchNorm, dropout, hooks or mixed
# precision.
#
# ### On a GPU
#
# With `full_run=True` on a GPU, the cell below times a step of the benchmark's
# stack (9 blocks, 32 channels, batch 32, $32 \times 32$) with each method, on the
# GPU, and measures the allocator's peak during the step, which is what decides
# whether a model fits. On the CPU it only says how to run it.

# %% tags=["nbval-ignore-output"]
if RUN.full_run:
    device = RUN.device()
    steps = RUN.iterations(20)
    torch.manual_seed(0)
    blocks = [(peers.preact_half(16), peers.preact_half(16)) for _ in range(9)]
    xg = torch.randn(32, 32, 32, 32, device=device)
    methods = {
        "autograd": ("autograd", None),
        "autograd, bf16 autocast": ("autograd", "autocast"),
        "autograd, save_on_cpu": ("autograd", "offload"),
        "checkpoint": ("checkpoint", None),
        "revlib reversible": ("revlib", None),
        "revlib reversible, bf16": ("revlib", "autocast"),
    }
    models = {
        name: peers.build(lib, copy.deepcopy(blocks), (32, 32, 32)).to(device)
        for name, (lib, _) in methods.items()
    }

    def gpu_step(name):
        how = methods[name][1]
        models[name].zero_grad(set_to_none=True)
        if how == "offload":
            with torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda"):
                y = models[name](xg.clone().requires_grad_())
        else:
            with torch.autocast(
                device.type, torch.bfloat16, enabled=how == "autocast"
            ):
                y = models[name](xg.clone().requires_grad_())
        y.float().square().mean().backward()

    gpu_rows = []
    for name in methods:
        gpu_step(name)  # warm-up
        peak = peak_memory_bytes(lambda name=name: gpu_step(name), device)
        seconds = []
        for _ in range(steps):
            synchronize(device)
            start = time.perf_counter()
            gpu_step(name)
            synchronize(device)
            seconds.append(time.perf_counter() - start)
        shown = "not measured" if peak is None else f"{peak / MiB:.0f}"
        gpu_rows.append([name, f"{1000 * statistics.median(seconds):.1f}", shown])
    show_table(
        ["method", f"median step (ms), {device.type}", "peak during a step (MiB)"],
        gpu_rows,
    )
else:
    print(
        "GPU comparison: not run (set full_run=True in RunSettings on a machine "
        "with a GPU)."
    )

# %% [markdown]
# ## What we learned
#
# - Four libraries recompute to save memory, and each is right on a plain stack. They
#   differ in what a real network adds: BatchNorm's running statistics are updated
#   again by every recomputation but revlib's; MemCNN's dropout gradients are wrong
#   even with `preserve_rng_state=True`, and RevTorch's masks are not the seed's;
#   observing hooks run two or three times per step; MemCNN doubles a leaf input's
#   gradient; RevTorch and PyPI's revlib give $F$ and $G$ no gradient when the input
#   does not require grad; and none of the three recomputes under the forward's
#   autocast.
# - Saved-tensor hooks cannot see what a library keeps on its autograd node; the
#   allocator's count can. By it, every reversible library keeps about one block's
#   output for the whole stack, and checkpointing one block input per block.
# - Checkpointing is the faster way to save memory when its $L x$ fits; reversible
#   blocks make memory flat in depth for a few percent more; mixed precision halves
#   either; offloading trades device memory for the bus.
