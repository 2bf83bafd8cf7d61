# %% [markdown]
# (app-tested-with)=
# # Appendix: what revlib is tested with
#
# revlib's promise for mode `"reversible"` is short: a gradient is autograd's, or
# a clear error. A promise is only as good as the list of things it was checked
# against, so this page keeps that list. Every row of the table at the end comes
# from a check that ran on this page (a model built, trained one step in mode
# `"autograd"` and in mode `"reversible"`, the two compared) or from a named test
# of the repository's suite, for what needs several processes.
#
# The checks use float64, where the two modes agree to rounding, so that any
# mechanism that were missing would show as an error of order one. Each check
# names what it would catch: the forward hooks of a block, a conditioning tensor,
# a mask, the state a layer keeps.

# %%
import logging
import socket

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import revlib
from revlib.harness.figures import show_table

torch.manual_seed(0)
rows = []


def two_modes(make):
    """The same model in modes autograd and reversible, with identical weights and
    buffers."""
    out = {}
    for mode in ("autograd", "reversible"):
        torch.manual_seed(0)
        model = make().double()
        revlib.set_mode(model, mode)
        out[mode] = model
    return out


def train_step(model, *inputs, **extras):
    """Gradients and buffers after one step of sum(y**2), from the same random state
    (dropout masks)."""
    torch.manual_seed(1)
    model.zero_grad(set_to_none=True)
    model(*inputs, **extras).square().sum().backward()
    return [p.grad for p in model.parameters()], [b.clone() for b in model.buffers()]


def largest_difference(models, *inputs, **extras) -> float:
    """max |reversible - autograd| over every gradient and buffer, relative to the
    largest gradient."""
    (g_ref, b_ref), (g, b) = (
        train_step(models[m], *inputs, **extras) for m in ("autograd", "reversible")
    )
    scale = max(r.abs().max().item() for r in g_ref)
    grads = (
        max((u - v).abs().max().item() for u, v in zip(g, g_ref, strict=True)) / scale
    )
    buffers = max(
        [(u - v).abs().max().item() for u, v in zip(b, b_ref, strict=True)] or [0.0]
    )
    return max(grads, buffers)


# %% [markdown]
# ## Layers with state: BatchNorm, dropout, spectral norm
#
# A recomputation must draw the same dropout masks, read the same normalisation
# statistics, and update the running statistics and the spectral norm's power
# iteration once, not twice ({ref}`ch-backprop`).


# %% tags=["nbval-ignore-output"]
def stateful_half():
    return nn.Sequential(
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.utils.parametrizations.spectral_norm(nn.Conv2d(4, 4, 3, padding=1)),
        nn.Dropout(0.3),
    )


def stateful_chain():
    return revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(stateful_half(), stateful_half()) for _ in range(3)]
    )


images = torch.randn(4, 8, 6, 6, dtype=torch.float64)
torch.manual_seed(1)
err = largest_difference(two_modes(stateful_chain), images)
print(f"BatchNorm, dropout, spectral norm: largest difference {err:.1e}")
assert err < 1e-10
rows.append(
    [
        "BatchNorm (statistics once), "
        "dropout (masks replayed), spectral norm (updated once)",
        "this page",
        f"{err:.0e}",
    ]
)


# %% [markdown]
# ## Hooks, conditioning and masks
#
# A block runs as PyTorch runs a module: its forward hooks run once per step, as
# in autograd mode (here a hook collects each Real NVP block's log-determinant,
# as a normalising flow does). A conditioning tensor (a time or class embedding)
# passes through the chain, `seq(x, cond=c)`, to every $F$ and $G$ whose
# `forward` takes an argument of that name, and the network that made it gets
# its gradient. Attention masks pass the same way to a reversible transformer.


# %% tags=["nbval-ignore-output"]
class FiLM(nn.Module):
    """tanh(W h) scaled and shifted by a conditioning vector."""

    def __init__(self):
        super().__init__()
        self.lin, self.scale, self.shift = (
            nn.Linear(3, 3),
            nn.Linear(2, 3),
            nn.Linear(2, 3),
        )

    def forward(self, h, cond):
        return torch.tanh(self.lin(h)) * (1 + self.scale(cond)) + self.shift(cond)


class Conditioned(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(1, 2)
        self.seq = revlib.ReversibleSequence(
            [revlib.AdditiveCoupling(FiLM(), FiLM(), dim=-1) for _ in range(3)]
        )

    def forward(self, x, t):
        return self.seq(x, cond=self.embed(t))


x = torch.randn(5, 6, dtype=torch.float64)
t = torch.rand(5, 1, dtype=torch.float64)
err_cond = largest_difference(two_modes(Conditioned), x, t)


def flow():
    nets = [
        nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 6)) for _ in range(3)
    ]
    return revlib.ReversibleSequence([revlib.AffineCoupling(n, dim=-1) for n in nets])


log_dets = {}
for mode, model in two_modes(flow).items():
    log_dets[mode] = []
    for block in model.blocks:
        block.register_forward_hook(
            lambda m, args, out, bag=log_dets[mode]: bag.append(
                m.log_det(args[0]).sum().item()
            )
        )
    train_step(model, x)
hook_gap = max(
    abs(a - b)
    for a, b in zip(log_dets["reversible"], log_dets["autograd"], strict=True)
)


def attention():
    return revlib.ReversibleSequence(
        [
            revlib.ReversibleTransformerBlock(4, heads=2, mlp_ratio=2.0)
            for _ in range(2)
        ]
    )


tokens = torch.randn(2, 5, 8, dtype=torch.float64)
padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
causal = torch.ones(5, 5, dtype=torch.bool).tril()
err_mask = largest_difference(
    two_modes(attention), tokens, attn_mask=causal, key_padding_mask=padding
)
print(
    f"block hooks: {len(log_dets['reversible'])} calls in mode reversible, "
    f"{len(log_dets['autograd'])} in autograd, "
    f"largest log-det difference {hook_gap:.1e}"
)
print(f"conditioning through the chain: largest difference {err_cond:.1e}")
print(f"causal and key-padding masks: largest difference {err_mask:.1e}")
assert (
    len(log_dets["reversible"]) == len(log_dets["autograd"]) == 3 and hook_gap < 1e-10
)
assert err_cond < 1e-10 and err_mask < 1e-10
rows += [
    ["forward hooks on a block (once per step)", "this page", f"{hook_gap:.0e}"],
    [
        "conditioning tensor through the chain, seq(x, cond=c)",
        "this page",
        f"{err_cond:.0e}",
    ],
    [
        "attention masks through the chain (causal, key padding)",
        "this page",
        f"{err_mask:.0e}",
    ],
]

# %% [markdown]
# What cannot work raises instead. Set as an attribute of $F$, the same
# conditioning tensor would reach $F$ in a forward that builds no graph, and its
# gradient would be lost without a word; the engine sees it arrive and says so.


# %%
class Attribute(nn.Module):
    def __init__(self):
        super().__init__()
        self.film, self.cond = FiLM(), None

    def forward(self, h):
        return self.film(h, self.cond)


halves = [Attribute() for _ in range(2)]
side = revlib.ReversibleSequence([revlib.AdditiveCoupling(*halves, dim=-1)]).double()
embed = nn.Linear(1, 2).double()
for h in halves:
    h.cond = embed(t)
try:
    side(x.clone().requires_grad_(True)).sum().backward()
    refused = None
except RuntimeError as error:
    refused = str(error)
print(refused[:160], "...")
assert (
    refused is not None and "requires grad" in refused and "seq(x, cond=c)" in refused
)
rows.append(
    [
        "a tensor reaching F by an attribute (refused, with the fix)",
        "this page",
        "error",
    ]
)

# %% [markdown]
# ## Mixed precision and data-parallel training
#
# Under autocast the recomputation runs in the autocast state the forward ran in.
# Here the forward and backward run under bfloat16 autocast on the CPU, with
# float32 weights. The replay casts the same values to bfloat16 as the forward,
# so the two modes agree to float32's rounding in this run; the check allows
# bfloat16's, since a reconstructed input, exact only to float32 rounding, can
# now and then round to a neighbouring bfloat16 value ({ref}`ch-coupling`).
# DistributedDataParallel's reducer sees each gradient once, as in autograd mode
# (one process here; the two-process runs are tests).


# %% tags=["nbval-ignore-output"]
def float_chain():
    return revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(stateful_half(), stateful_half()) for _ in range(2)]
    )


def autocast_grads(mode):
    torch.manual_seed(0)
    model = float_chain()
    model.mode = mode
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(images.float()).float().square().sum().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


g_rev, g_auto = autocast_grads("reversible"), autocast_grads("autograd")
err_amp = ((g_rev - g_auto).abs().max() / g_auto.abs().max()).item()
print(
    "bfloat16 autocast: largest gradient difference "
    f"between the modes {err_amp:.1e} of the largest gradient"
)
assert (
    torch.isfinite(g_rev).all() and err_amp < 2**-7
)  # bfloat16 keeps 8 significant bits


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


dist.init_process_group(
    "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
)
try:
    models = two_modes(stateful_chain)
    models["reversible"] = DistributedDataParallel(models["reversible"])
    torch.manual_seed(1)
    err_ddp = largest_difference(models, images)
finally:
    dist.destroy_process_group()
print(
    f"DistributedDataParallel (gloo, one process): largest difference {err_ddp:.1e}"
)
assert err_ddp < 1e-10
rows += [
    ["bfloat16 autocast (float32 weights, CPU)", "this page", f"{err_amp:.0e}"],
    ["DistributedDataParallel, one process", "this page", f"{err_ddp:.0e}"],
    [
        "DistributedDataParallel, two processes (gloo) "
        "vs one process on the full batch",
        "tests/core/engine/test_distributed_ddp.py",
        "≤ 1e-12",
    ],
    [
        "FSDP2 fully_shard per block and at the root, "
        "two processes (gloo), two steps",
        "tests/core/engine/test_distributed_fsdp.py",
        "≤ 1e-12",
    ],
    [
        "FSDP2 with a bfloat16 MixedPrecisionPolicy on the blocks only, the "
        "sequence's input cast to bfloat16 by the model, two processes (gloo), "
        "vs the same setup in mode autograd",
        "tests/core/engine/test_distributed_fsdp_mixed_precision.py",
        "≤ 8 x 2^-8 in norm (bfloat16)",
    ],
    [
        "FSDP2 mixed precision that casts between the blocks "
        "(cast_forward_inputs on a float32 input, output_dtype)",
        "tests/core/engine/test_distributed_fsdp_mixed_precision.py",
        "error",
    ],
    [
        "Python random, NumPy, module-owned torch.Generator, step counters",
        "tests/core/engine/test_random_state.py, "
        "tests/core/engine/test_buffers_and_state.py",
        "≤ 1e-12",
    ],
    [
        "buffers written without a version bump (F.batch_norm, .data)",
        "tests/core/engine/test_buffers_and_state.py",
        "≤ 1e-12",
    ],
    [
        "hooks that change F; hooks that change a block's input or output (refused)",
        "tests/core/engine/test_hooks.py",
        "≤ 1e-12 / error",
    ],
    [
        "a subclass that changes _forward but "
        "inherits a fused step (generic step used)",
        "tests/core/engine/test_block_contract.py",
        "≤ 1e-12",
    ],
    [
        "checkpoint inside F, vmap, lazy modules, "
        "parametrize.cached() (clear errors)",
        "tests/core/engine/test_clear_errors.py, "
        "tests/core/engine/test_side_inputs.py",
        "error",
    ],
]

# %% [markdown]
# ## torch.compile
#
# `torch.compile(model)` reaches the sequence, calls the engine eagerly (one graph
# break) and the engine calls a compiled version of every F and G, in the forward,
# in the replay and in the backward step, so everything above holds compiled.
# Here the stateful chain (BatchNorm, spectral norm, dropout) is compiled and
# trained three steps beside an eager autograd copy.

# %% tags=["nbval-ignore-output"]
logging.getLogger("torch.utils.cpp_extension").setLevel(
    logging.ERROR
)  # "No CUDA runtime is found" on a CPU


def compiled_half():
    return nn.Sequential(
        nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Dropout(0.3)
    )


torch._dynamo.reset()
models = two_modes(
    lambda: revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(compiled_half(), compiled_half()) for _ in range(3)]
    )
)
compiled = torch.compile(models["reversible"])
err_compile = 0.0
for _ in range(3):
    (g_ref, b_ref) = train_step(models["autograd"], images)
    (g, b) = train_step(compiled, images)
    scale = max(r.abs().max().item() for r in g_ref)
    err_compile = max(
        err_compile,
        max((u - v).abs().max().item() for u, v in zip(g, g_ref, strict=True))
        / scale,
        max((u - v).abs().max().item() for u, v in zip(b, b_ref, strict=True)),
    )
graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
print(
    f"torch.compile, 3 steps: largest difference {err_compile:.1e}; "
    f"{graphs} compiled graphs for 6 sub-functions"
)
assert err_compile < 1e-10 and graphs >= 2
rows.append(
    [
        "torch.compile(model): F and G compiled, the engine eager",
        "this page",
        f"{err_compile:.0e}",
    ]
)
rows.append(
    [
        "torch.compile: no recompilation after the first steps; "
        "saved bytes flat in depth",
        "tests/core/engine/test_compile.py",
        "≤ 1e-10",
    ]
)
rows += [
    [
        "a block of torch's plain layers: its forward writes no tape (compiled: "
        "one graph); dropout, a hook, a user's layer or block class keep the "
        "recorded path",
        "tests/core/engine/test_tapeless_forward.py, test_compile.py",
        "≤ 1e-10",
    ],
    [
        "hook-based weight_norm / spectral_norm inside F; a forward hook that edits "
        "its output in place; a hook removed between forward and backward",
        "tests/core/engine/test_hooks_that_set_state.py",
        "≤ 1e-9",
    ],
    [
        "random.Random, NumPy Generator or RandomState as an attribute, in a list, "
        "or a module-level global",
        "tests/core/engine/test_host_state.py",
        "≤ 1e-9",
    ],
    [
        "an attribute or a mutable extra changed between forward and backward; "
        "a pre-hook that changes an extra",
        "tests/core/engine/test_host_state.py",
        "≤ 1e-9",
    ],
    [
        "a forward that appends to a list or replaces a tensor it keeps",
        "tests/core/engine/test_host_state.py",
        "error",
    ],
    [
        "torch.func.jvp and dual tensors (forward-mode derivatives)",
        "tests/core/engine/test_forward_mode.py",
        "≤ 1e-12",
    ],
    [
        "a tensor read from a closure or a global under torch.compile",
        "tests/core/engine/test_side_inputs_compiled.py",
        "error",
    ],
    [
        "an extra argument nothing takes; an instance-level forward (every mode)",
        "tests/core/engine/test_refusals_in_every_mode.py",
        "error",
    ],
    [
        "an i-RevNet with injective zero padding (pad=1, a bottleneck's pad, more "
        "zeros than channels), default initialisation: no exact zero enters a ReLU",
        "tests/models/test_irevnet_vit.py",
        "≤ 1e-10",
    ],
    [
        "a memory budget (fractions 0 to 1 of autograd's bytes, and bytes): kept "
        "blocks as in autograd, the rest reversed; BatchNorm, dropout, conditioning",
        "tests/core/engine/test_budget.py",
        "≤ 1e-9",
    ],
    [
        "a memory budget under torch.compile(model)",
        "tests/core/engine/test_compile.py",
        "≤ 1e-10",
    ],
    [
        "auxiliary losses from inside F (a mixture-of-experts balancing loss) with "
        "revlib.add_aux_loss, in modes checkpoint and reversible and under a budget",
        "tests/core/engine/test_aux_losses.py",
        "≤ 1e-9",
    ],
    [
        "a loss stored on a module attribute in F's forward",
        "tests/core/engine/test_aux_losses.py",
        "error",
    ],
    [
        "tensors inside lists, tuples and dicts passed through the chain",
        "tests/core/engine/test_extras_in_containers.py",
        "≤ 1e-9",
    ],
    [
        "a tensor among the extras refilled in place before the backward (named)",
        "tests/core/engine/test_extras_in_containers.py",
        "error",
    ],
    [
        "a hook in F that keeps its input, a view, or a statistic it computed",
        "tests/core/engine/test_refusals_name_the_cause.py, test_reaching_f_more.py",
        "error",
    ],
    [
        "hooks with keyword arguments; a hook replaced before the backward; global "
        "module hooks (replayed as at the forward, refused when they keep what would "
        "carry a gradient); a hook that keeps detached copies",
        "tests/core/engine/test_reaching_f_more.py",
        "≤ 1e-9",
    ],
    [
        "a torch.Generator in a list, a dict or a global; a generator drawn in a "
        "method forward calls; a pre-hook that scales a tensor extra; an object "
        "extra changed before the backward",
        "tests/core/engine/test_reaching_f_more.py",
        "≤ 1e-9",
    ],
    [
        "list, tuple, dict and config-object attributes, and module-level dicts and "
        "scalars F reads, changed between forward and backward",
        "tests/core/engine/test_host_containers.py",
        "≤ 1e-12",
    ],
    [
        "an extra the forward changes in place (a loss appended to a list passed "
        "in); a tensor stored in a dict attribute; a mask extra refilled in place",
        "tests/core/engine/test_extras_in_containers.py, test_host_containers.py",
        "error",
    ],
    [
        "a generator passed as an extra or held by a config; settings nested in a "
        "config, global, at class level or in a helper's closure, NumPy scalars, "
        "None, a swapped activation; a hook acting by a counter (in a closure, a "
        "partial, a module); mode checkpoint with model.eval() before the backward",
        "tests/core/engine/test_reached_state.py",
        "≤ 1e-12",
    ],
    [
        "a loss collected in a global, closure or nested list, a dict, or a field "
        "of an object",
        "tests/core/engine/test_reached_state.py",
        "error",
    ],
    [
        "check_inverse with extras and on complex inputs; AffineCoupling.log_det "
        "with conditioning",
        "tests/core/engine/test_check_inverse_inputs.py",
        "≤ 1e-9",
    ],
    [
        "a momentum network whose gamma^-N is large (warned with the numbers)",
        "tests/core/engine/test_refusals_in_every_mode.py",
        "warning",
    ],
    [
        "ported models: a Hugging Face-style reversible transformer (mask, dropout, "
        "head mask, shared config, shared and frozen layers); a GAN with spectral "
        "norm (its gradient penalty refused; in mode checkpoint the power iteration "
        "steps once); a conditional flow; gradient accumulation with clipping",
        "tests/core/engine/test_pattern_transformer.py, test_pattern_gan.py, "
        "test_pattern_flow.py",
        "≤ 1e-9",
    ],
    [
        "torch.compile(block.F), torch.compile(block), torch.jit.script(block.G)",
        "tests/core/engine/test_refusals_name_the_cause.py",
        "error",
    ],
]

# %% [markdown]
# ## The list
#
# "Largest difference" is $\max|g_{\text{reversible}} - g_{\text{autograd}}|$ over
# every gradient and buffer, relative to the largest gradient (float64); a
# test's entry is the tolerance it asserts, and "error" means the engine refuses
# the case with a message that names the mode and the fix. The test files are in
# the repository's `tests/core/engine/` folder (others in `tests/` with their
# folder) and run in its CI.

# %% tags=["nbval-ignore-output"]
short = [
    [what, where.replace("tests/core/engine/", ""), diff]
    for what, where, diff in rows
]
show_table(["what users do", "checked in", "largest difference"], short)
