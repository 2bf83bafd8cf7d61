# %% [markdown]
# (app-engine)=
# # Appendix: the engine, and what a recomputation must replay
#
# {ref}`ch-backprop` derived Algorithm 1 and checked it on the two cases every
# RevNet meets: dropout's masks must be drawn again identically, and BatchNorm's
# running statistics must be updated once. A library that promises autograd's
# gradients for *any* F and G must do more, and this appendix lists what
# `revlib`'s engine records and checks, with one example that exercises most of it
# at once and the memory the records cost. It is library engineering rather than
# mathematics; nothing in the other chapters depends on reading it.
# {ref}`app-peers` puts four other libraries, and `torch.utils.checkpoint`, through
# the same checks.

# %%
import copy
from types import SimpleNamespace

import torch
from torch import nn

from revlib import AdditiveCoupling, ReversibleSequence
from revlib.core.memory import saved_tensor_bytes

_ = torch.manual_seed(0)

# %% [markdown]
# ## What the recomputation must replay
#
# The reversible backward of {ref}`ch-backprop` runs F and G a second time, possibly
# long after the forward and in a different state of the program. Its promise is autograd's
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
# - **Parameter hooks.** Inside the backward, parameter gradients are taken with
#   respect to detached aliases of the parameters; each block's gradient is handed
#   to the autograd engine, so `register_hook` and DDP's reducer see what they see
#   in mode `"autograd"`.
# - **Module hooks.** The engine calls every block as PyTorch calls a module,
#   `block(h)`, so the block's forward hooks run once per step and FSDP2's hooks
#   unshard its parameters around its forward and its backward step. Inside the
#   block the forward runs without a graph as one autograd node per block; a hook
#   on a module inside F runs once per step too, and again in the replay only if
#   it returned a value (then it changes F), as the forward ran it even if it was
#   removed since. A hook that changes a block's input or output, or keeps what
#   would carry a gradient in mode `"autograd"` (an activation from inside F, or a
#   statistic of one, which have no graph here), is refused; a detached copy kept
#   for inspection is not. A hook that acts by a counter sees the count it saw in
#   the forward. A global module hook is treated alike, and it also sees the
#   replay, so it can count evaluations.
# - **Inputs from outside.** A conditioning tensor or a mask goes through the
#   chain, `seq(x, cond=c, mask=m)`, to every F and G that takes that keyword, and
#   gets its gradient. A tensor that requires grad and reaches F any other way
#   (an attribute, an unregistered parameter, `parametrize.cached()`) is refused,
#   with its shape and the block named.
# - **State torch does not track.** Buffers written without a version bump
#   (`F.batch_norm` on one's own buffers, `.data` writes) are found by value;
#   Python's `random`, NumPy's global generator, a `torch.Generator` held by a
#   module, and scalar attributes a call changes (a step counter) are replayed
#   from their values before the call, and so is a generator passed in as an
#   extra argument; so are the lists, dicts and config objects a module keeps and
#   the globals, class attributes and closures its code reads, if they change
#   before the backward. A tensor the forward stores outside its output (a loss
#   appended to a list, global or passed in, or set on a config) is refused: it
#   would have no graph. `revlib/core/replay/host.py` lists what is not reached.
# - **`torch.compile`.** Dynamo reaches the sequence and calls the engine
#   eagerly (one graph break); the engine calls a compiled version of each F and
#   G in the forward, the replay and the backward step, so the guarantees above
#   hold compiled. A block whose tape would record nothing (revlib's own block,
#   made only of torch's plain layers, with no hook) runs its whole forward as
#   one compiled graph; on the CPU, an additive coupling of images among them
#   also runs its backward step as one graph, through `torch.func.vjp`, and a
#   chain of such blocks hands its tensors from block to block channels-last,
#   converting its input and output once ({ref}`sec-engine-share` measures why).
#
# The appendix {ref}`app-tested-with` lists what each of these is checked with.
#
# One example with most of these at once: token sequences split along the feature
# dimension, halves with a spectrally normalised linear map, RReLU and functional
# dropout, a hook on every parameter, and `model.eval()` called between forward
# and backward. In float64 the reversible gradients must equal autograd's to
# round-off, the spectral-norm buffers must be bit-equal, and every hook must fire
# exactly once; with the RNG replay switched off, the same step is wrong.


# %%
class NoisyHalf(nn.Module):
    """A half with a random activation, a buffer updated in every training forward,
    and dropout."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.lin = nn.utils.parametrizations.spectral_norm(nn.Linear(d, d))
        self.act = nn.RReLU()

    def forward(self, h):
        return torch.nn.functional.dropout(self.act(self.lin(h)), 0.2, self.training)


torch.manual_seed(0)
tricky = ReversibleSequence(
    [AdditiveCoupling(NoisyHalf(), NoisyHalf(), dim=-1) for _ in range(3)]
).double()
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
    return SimpleNamespace(
        grads=[p.grad for p in m.parameters()],
        buffers=list(m.buffers()),
        hooks=len(hook_calls),
    )


replay = {
    name: replay_step(*args)
    for name, args in {
        "autograd": ("autograd",),
        "reversible": ("reversible",),
        "no RNG replay": ("reversible", False),
    }.items()
}
n_params = len(list(tricky.parameters()))
for name in ["reversible", "no RNG replay"]:
    r, ref = replay[name], replay["autograd"]
    err = max(
        ((a - b).abs().max() / b.abs().max()).item()
        for a, b in zip(r.grads, ref.grads, strict=True)
    )
    same_buffers = all(
        torch.equal(a, b) for a, b in zip(r.buffers, ref.buffers, strict=True)
    )
    print(
        f"{name!r:16s} gradients equal autograd's to round-off: {err < 1e-12}; "
        f"buffers bit-equal: {same_buffers}; "
        f"hook calls: {r.hooks} for {n_params} parameters"
    )
    replay[name].err = err
assert replay["autograd"].hooks == replay["reversible"].hooks == n_params
assert replay["reversible"].err < 1e-12
assert all(
    torch.equal(a, b)
    for a, b in zip(
        replay["reversible"].buffers, replay["autograd"].buffers, strict=True
    )
)
assert replay["no RNG replay"].err > 1e-2

# %% [markdown]
# What the replay keeps is counted like any saved tensor: one CPU generator state
# per call that drew random numbers, and nothing for a deterministic chain.

# %%
state_bytes = torch.get_rng_state().numel()


def chain_of(make_half):
    return ReversibleSequence(
        [AdditiveCoupling(make_half(), make_half(), dim=-1) for _ in range(3)]
    ).double()


random_bytes = saved_tensor_bytes(
    chain_of(lambda: nn.Sequential(nn.Linear(4, 4), nn.RReLU())), tokens
)
plain_bytes = saved_tensor_bytes(chain_of(lambda: nn.Linear(4, 4)), tokens)
output_bytes = tokens.numel() * tokens.element_size()
print(
    "saved bytes, 3 blocks with RReLU halves: "
    f"{random_bytes} = output {output_bytes} + 6 calls x {state_bytes}"
)
print(f"saved bytes, 3 deterministic blocks:     {plain_bytes} = the output alone")
assert random_bytes == output_bytes + 6 * state_bytes and plain_bytes == output_bytes

# %% [markdown]
# ## What we learned
#
# - A recomputation gives autograd's gradients only if it replays everything the
#   first run depended on besides its input: random draws, train/eval flags,
#   autocast, and buffers that the forward updated.
# - `revlib` records random-number states only for calls that moved them, runs
#   the replay on copies of changed buffers, checks every parameter and buffer for
#   changes between forward and backward, and hands each parameter's gradient to
#   the autograd engine once, so hooks and DDP see what they see under autograd.
# - The records cost one generator state per random call, and nothing for a
#   deterministic chain; a fused optimizer step between forward and backward
#   cannot be detected by any mode.
