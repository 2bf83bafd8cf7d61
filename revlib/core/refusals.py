"""Every refusal of mode ``"reversible"``: one function per cause, each message written once.

Each returns the exception (the caller raises it), naming what was seen, why
the reversible backward cannot give autograd's gradient with it, and the fix.
``owner`` names the sequence and the block (:func:`owner`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

OWNER = "ReversibleSequence(mode='reversible')"
_AUTOGRAD = "use mode='autograd' (revlib.set_mode(model, 'autograd'))"


def owner(index: int, block: nn.Module) -> str:
    """How an error names block ``index`` of a chain in mode ``"reversible"``."""
    return f"{OWNER}, block {index} ({type(block).__name__})"


def side_input(owner: str, shape: tuple[int, ...]) -> RuntimeError:
    return RuntimeError(
        f"{owner}: a tensor of shape {shape} that requires grad reaches the block without "
        "being an input of the chain or a registered parameter (e.g. a conditioning tensor set as "
        "an attribute of F, or an nn.Parameter kept in a plain list). The reversible forward "
        "builds no graph, so its gradient would be lost. Pass it through the chain (seq(x, "
        "cond=c): F and G receive it by keyword), register it as a parameter, or use "
        "mode='autograd'."
    )


def graph_needed(owner: str, err: Exception) -> RuntimeError:
    return RuntimeError(
        f"{owner}: code inside the block needs a graph in the forward "
        f"({_first_line(err)}), e.g. register_hook on an activation or torch.autograd.grad "
        "inside F. The reversible forward runs without a graph (its backward rebuilds the "
        "activations). Put the hook on the block's output, or use mode='autograd'."
    )


def vmap(err: Exception | None = None) -> RuntimeError:
    cause = f" ({_first_line(err)})" if err is not None else ""
    return RuntimeError(
        f"{OWNER} cannot run its backward under vmap "
        "(torch.autograd.functional.jacobian(vectorize=True), "
        "torch.autograd.grad(is_grads_batched=True)): it reconstructs activations outside the "
        f"graph. Use mode='autograd' (revlib.set_mode(model, 'autograd')) for batched "
        f"gradients.{cause}"
    )


def checkpoint_inside(owner: str, err: Exception) -> RuntimeError:
    return RuntimeError(
        f"{owner}: torch.utils.checkpoint inside a reversible block is not supported: its "
        "recomputation runs outside the engine's replay (random state, autocast, running "
        "statistics), and it saves nothing here anyway, since the block's activations are not "
        "stored. Remove the checkpoint from F/G (revlib's CheckpointedModule runs plainly "
        "inside a block), or use mode='checkpoint' for the whole sequence. "
        f"({_first_line(err)})"
    )


def explain_forward_error(err: RuntimeError, owner: str) -> RuntimeError | None:
    """The refusal that a RuntimeError raised inside a block's forward stands for, if known."""
    text = str(err)
    if "doesn't require gradient" in text or "does not require grad" in text:
        return graph_needed(owner, err)
    return None


def explain_backward_error(err: Exception, owner: str) -> Exception | None:
    """The refusal that an error raised inside a block's backward step stands for, if known."""
    text = str(err)
    if "Batching rule not implemented" in text or "vmap" in text:
        return vmap(err)
    if isinstance(err, torch.utils.checkpoint.CheckpointError) or "heckpoint" in text:
        return checkpoint_inside(owner, err)
    return None


def forward_overridden(owner: str, block: nn.Module) -> TypeError:
    cls = next(c for c in type(block).__mro__ if "forward" in vars(c)).__name__
    return TypeError(
        f"{owner}: {cls} overrides forward(). In mode='reversible' a block's function is its "
        "_forward(x, run) and its inverse _inverse(y, run), so the override would be inverted "
        "wrongly. Move the change into _forward/_inverse, or use mode='autograd'."
    )


def not_a_block(index: int, module: nn.Module) -> TypeError:
    if _is_compiled(module):
        return TypeError(
            f"ReversibleSequence: block {index} is torch.compile'd ({type(module).__name__}). "
            "Compile the whole model instead (torch.compile(model)): in mode 'reversible' the "
            "engine then runs compiled versions of every F and G (revlib.core.compiled), and "
            "the other modes compile as usual."
        )
    return TypeError(
        f"ReversibleSequence: block {index} is a {type(module).__name__}, not a ReversibleBlock "
        "(use a coupling such as revlib.AdditiveCoupling)"
    )


def contract_missing(index: int, block: nn.Module) -> TypeError:
    return TypeError(
        f"ReversibleSequence: block {index} ({type(block).__name__}) does not implement "
        "_forward(x, run) and _inverse(y, run); a ReversibleBlock writes its two directions "
        "there, calling each sub-function as run(name, fn, h) (see ReversibleBlock's docstring)"
    )


def forward_replaced_on_instance(index: int, block: nn.Module) -> TypeError:
    return TypeError(
        f"ReversibleSequence block {index} ({type(block).__name__}): an instance attribute "
        "'forward' replaces the block's forward (block.forward = ...). A reversible block "
        "computes its _forward(x, run) and inverts it with _inverse(y, run), in every mode; put "
        "the change into F or G, or subclass the block and override both _forward and _inverse."
    )


def compiled_inside(owner: str, name: str) -> TypeError:
    return TypeError(
        f"{owner}: {name} is torch.compile'd (an OptimizedModule inside a block). The engine "
        "runs each F and G itself, in the forward and again in the backward step, and compiles "
        "them when the model is compiled: compile the whole model (torch.compile(model)) and "
        "keep F and G eager modules, or use mode='autograd'."
    )


def scripted_inside(owner: str, name: str) -> TypeError:
    return TypeError(
        f"{owner}: {name} is a TorchScript module (torch.jit.script or trace). The engine swaps "
        "and checks a sub-function's parameters and buffers around its replay, which a "
        "ScriptModule does not allow. Use the eager module (and torch.compile(model) for "
        "speed), or use mode='autograd'."
    )


def lazy_inside(module: nn.Module) -> RuntimeError:
    return RuntimeError(
        f"{OWNER}: {type(module).__name__} has uninitialized parameters (a lazy module). Run one "
        "forward under torch.no_grad() (or in mode='autograd') to initialise them before "
        "training in mode 'reversible'."
    )


def parametrize_cached() -> RuntimeError:
    return RuntimeError(
        f"{OWNER}: torch.nn.utils.parametrize.cached() is active around a parametrized module in "
        "a block. The cached weight would be computed once, in the forward that builds no graph, "
        "and its parameters would get no gradient. Leave the forward and backward outside "
        "cached(), or use mode='autograd'."
    )


def functional_transform() -> RuntimeError:
    return RuntimeError(
        f"{OWNER} cannot run inside torch.func transforms (grad, vjp, vmap, jacrev): its "
        "backward reconstructs activations outside the graph. Set mode='autograd' "
        "(revlib.set_mode(model, 'autograd')) for functional transforms."
    )


def _is_compiled(module: nn.Module) -> bool:
    return type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod")


def output_changed_by_hook(owner: str) -> RuntimeError:
    return RuntimeError(
        f"{owner}: a forward hook on the block replaced or changed its output. The reversible "
        "backward rebuilds each block's input from its output, so the block must return what "
        "its _forward computed. Observe in the hook (return None) or use mode='autograd'."
    )


class InputChangedByHook(RuntimeError):
    """:func:`input_changed_by_hook`'s error; ``owner`` names the block (a block's forward that
    knows the cause, e.g. FSDP's mixed precision, raises :func:`fsdp_mixed_precision` from it)."""

    def __init__(self, owner: str, message: str) -> None:
        super().__init__(message)
        self.owner = owner


def input_changed_by_hook(owner: str) -> InputChangedByHook:
    return InputChangedByHook(
        owner,
        f"{owner}: a forward pre-hook on the block changed its input. The reversible backward "
        "hands each block the output of the block before it, so a block must receive it "
        "unchanged. Observe in the hook (return None) or use mode='autograd'.",
    )


def double_backward() -> RuntimeError:
    return RuntimeError(
        f"{OWNER} does not support double backward (create_graph=True): its backward "
        "reconstructs activations outside the graph. Use mode='autograd' or mode='checkpoint' "
        "for higher-order gradients."
    )


def output_modified_in_place() -> RuntimeError:
    return RuntimeError(
        f"{OWNER}: the sequence's output was modified in place (e.g. relu_) before backward; "
        "the backward reconstructs every activation from that output. Use the out-of-place op "
        "(relu) or clone the output first."
    )


def extra_modified_in_place(owner: str, name: str, shape: tuple[int, ...]) -> RuntimeError:
    return RuntimeError(
        f"{owner}: the extra argument {name} (shape {shape}) was modified in place between the "
        "forward and the backward (e.g. a mask refilled for the next micro-batch). The backward "
        "step runs F and G again with it, so it needs the values of the forward. Run backward "
        "before refilling it, pass a clone (seq(x, mask=m.clone())), or use mode='autograd'."
    )


def extra_changed_by_forward(owner: str, name: str) -> RuntimeError:
    return RuntimeError(
        f"{owner}: the block's forward changed the extra argument {name!r} in place (e.g. "
        "appended an auxiliary loss to a list passed in). In mode='reversible' the forward "
        "receives rebuilt containers and copies of mutable objects, and builds no graph: the "
        "change would not reach your object, and a tensor stored there would get no gradient. "
        "Report a loss with revlib.add_aux_loss(loss) (collected in seq.aux_losses, with its "
        "gradient), return what you need as part of the output, or use mode='autograd'."
    )


def output_changed_unseen() -> RuntimeError:
    return RuntimeError(
        f"{OWNER}: the sequence's output was changed after the forward without autograd seeing "
        "it (a write through y.data or y.detach()); the backward reconstructs every activation "
        "from that output. Change a clone instead."
    )


def backward_before_rebuilt(owner: str) -> RuntimeError:
    return RuntimeError(
        f"{owner}: the backward reached this block before the next block's step rebuilt its "
        "output: a gradient flows into an inner block's output from outside the chain, without "
        "the chain's output (e.g. a loss on a block output kept by a hook alone). Include the "
        "sequence's output in the loss, or use mode='autograd'."
    )


def submodules_changed(owner: str) -> RuntimeError:
    return RuntimeError(f"{owner}: the blocks' submodules changed between forward and backward")


def _listed(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def weights_replaced(owner: str, names: list[str]) -> RuntimeError:
    return RuntimeError(
        f"{owner}: parameters or buffers were replaced between forward and backward "
        f"({_listed(names)}; e.g. by torch.func.functional_call or a weight swap). The "
        "reconstruction needs the forward's weights and buffers. Use mode='autograd' for "
        "functional calls."
    )


def weights_modified(owner: str, names: list[str]) -> RuntimeError:
    return RuntimeError(
        f"{owner}: parameters or buffers were modified in place between forward and backward "
        f"({_listed(names)}; e.g. an optimizer step before backward). The reconstruction would "
        "use the new values and give wrong gradients. Call backward first. (A fused optimizer "
        "step, which moves no version counter, cannot be detected: PyTorch limitation.)"
    )


def kept_state_changed(owner: str, m: nn.Module, key: str, value: Any) -> RuntimeError:
    kind = "tensor" if isinstance(value, Tensor) else "list"
    return RuntimeError(
        f"{owner}: the forward of {type(m).__name__} changed its {kind} attribute {key!r}. The "
        "backward step runs the forward again, which would see it changed and compute something "
        "else. Keep running state in a buffer (register_buffer: updated once, replayed), report "
        "a loss with revlib.add_aux_loss(loss) (seq.aux_losses, with its gradient), return what "
        "a later step needs as part of the output, or use mode='autograd'."
    )


def tensor_kept_from_forward(owner: str, m: nn.Module, key: str, t: Tensor) -> RuntimeError:
    return RuntimeError(
        f"{owner}: the forward of {type(m).__name__} stored a tensor of shape {tuple(t.shape)} "
        f"in its attribute {key!r}. In mode='reversible' the forward builds no graph, so a loss "
        "on that tensor would get no gradient. Report a loss with revlib.add_aux_loss(loss) "
        "(collected in seq.aux_losses, with its gradient), keep running state in a buffer, or "
        "use mode='autograd'."
    )


def tensor_kept_in_shared_list(owner: str, m: nn.Module, t: Tensor) -> RuntimeError:
    return RuntimeError(
        f"{owner}: the forward of {type(m).__name__} appended a tensor of shape "
        f"{tuple(t.shape)} to a list it reads from a global name or its closure (e.g. a list "
        "collecting auxiliary losses). In mode='reversible' the forward builds no graph, so a "
        "loss on that tensor would get no gradient. Report a loss with revlib.add_aux_loss(loss) "
        "(collected in seq.aux_losses, with its gradient), or use mode='autograd'."
    )


def tensor_attribute_changed(owner: str, m: nn.Module, key: str) -> RuntimeError:
    return RuntimeError(
        f"{owner}: the tensor attribute {key!r} of {type(m).__name__} was replaced or changed in "
        "place between the forward and the backward (e.g. a mask refilled for the next "
        "micro-batch). The backward step runs the forward again and would use the new one. Pass "
        "it through the chain instead (seq(x, mask=m): the engine keeps what the forward "
        "received), run backward before changing it, or use mode='autograd'."
    )


def hook_kept_output(owner: str, name: str, shape: tuple[int, ...]) -> RuntimeError:
    return RuntimeError(
        f"{owner}: a hook on {name} kept a tensor of shape {shape} (its output or input, a view "
        "of it, or a value computed from it) after the block's forward. In mode='reversible' "
        "the forward builds no graph, so a loss on that tensor would get no gradient. Report a "
        "loss with revlib.add_aux_loss(loss) from inside F, take the activation from the "
        f"block's output, or {_AUTOGRAD}."
    )


def extras_not_taken(unused: set[str]) -> TypeError:
    return TypeError(
        f"ReversibleSequence: no sub-function of any block takes the extra argument(s) "
        f"{sorted(unused)} by name; give F or G a parameter of that name (or **kwargs)."
    )


def fsdp_mixed_precision(owner: str, what: str, dtype: torch.dtype) -> RuntimeError:
    """FSDP2's ``MixedPrecisionPolicy`` on a block casts the tensor that flows into it (``what``:
    ``"input"``, ``cast_forward_inputs`` to ``param_dtype``) or out of it (``"output"``,
    ``output_dtype``) to ``dtype``."""
    name = str(dtype).removeprefix("torch.")
    if what == "input":
        setting = "cast_forward_inputs with param_dtype"
        fix = (
            f"Give the sequence its input in {name} already (seq(h.to(torch.{name})), or the same "
            "policy on the module that holds the sequence)"
        )
    else:
        setting = "output_dtype"
        fix = (
            "Leave output_dtype unset on the blocks and cast the sequence's output instead "
            f"(seq(h).to(torch.{name}))"
        )
    return RuntimeError(
        f"{owner}: FSDP2's MixedPrecisionPolicy on the block casts its {what} to {name} "
        f"({setting}). In mode='reversible' each block's backward step rebuilds its input from "
        "its output and hands it to the block before it as that block's output, so the tensors "
        f"between the blocks must pass unchanged, in one dtype. {fix}, or {_AUTOGRAD}."
    )


def _first_line(err: Exception) -> str:
    text = str(err)
    return text.splitlines()[0] if text else type(err).__name__
