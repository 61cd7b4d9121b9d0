"""Discovery and plan: which modules of a model are probed, and the hooks each one gets.

`install` walks the model once, makes a `LayerState` per probed module, registers the model's own
forward hooks and plans the others' (registered by probes/_forward.py hook_modules), hooks the
scripted parameters and the optimizer steps, and says in `limitations` what cannot be measured.
Every handle goes on the session's ExitStack.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize

from probes._backward import make_param_grad_ready
from probes._forward import hook_modules, make_flush_before_inplace, make_post_hook, make_pre_hook
from probes._state import TrackedParam
from probes.gradients import ParamGradients
from probes.stats import saturation_bounds, tracks_dead
from probes.targets import (
    ACTIVATION_MODULES,
    WEIGHTED_KINDS,
    exported_type_names,
    in_parametrization,
    kind_of,
    own_parameters,
    type_name_of,
)
from probes.tracker import LayerState
from probes.updates import UpdateTracker

if TYPE_CHECKING:
    from probes._state import SessionState

_CONV1D_TYPES = frozenset({"Conv1d", "ConvTranspose1d", "LazyConv1d"})


def keep_dynamo_out() -> bool:
    """Tell dynamo never to trace code of this package; False when this torch has no such rule.

    Left to dynamo, our hooks are traced when a module runs inside torch.compile: graph breaks at
    every `.item()` and recompilations (weak references, ids) until dynamo's recompile limit,
    with its warnings. With `probes` among dynamo's skipped files, each hook is a graph break that
    runs eagerly, on real tensors, and the hooks cost nothing extra outside compiled code.
    Wrapping every hook in `torch.compiler.disable` instead costs ~2.5 us a call: 0.6 ms a step
    on the 60-layer MLP of benchmarks/overhead.py (W4), and torch >= 2.13 imports dynamo with
    any optimizer, so that wrapper was paid in ordinary eager runs too. The rule is only added
    when dynamo is already loaded (importing it takes ~2 s); it is process-wide and permanent,
    which is harmless: it only says that dynamo must not trace the probes.
    """
    if "torch._dynamo" not in sys.modules:
        return True  # nothing to keep out; a model compiled later still works, with warnings
    global _DYNAMO_SKIPS_PROBES
    if _DYNAMO_SKIPS_PROBES is None:
        try:
            from torch._dynamo import trace_rules

            trace_rules.add(__name__.partition(".")[0])
            _DYNAMO_SKIPS_PROBES = True
        except Exception:  # an older or newer dynamo without this rule: wrap the hooks instead
            _DYNAMO_SKIPS_PROBES = False
    return _DYNAMO_SKIPS_PROBES


_DYNAMO_SKIPS_PROBES: bool | None = None


def _runs_only_children(module: nn.Module) -> bool:
    """A container whose forward is nn.Sequential's: it calls its children in turn, nothing else."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _is_silent_builtin(module: nn.Module, kind: str | None) -> bool:
    """A torch.nn leaf that is not probed and calls no activation (Dropout, pooling, Flatten, ...).

    Such modules get no hooks at all: nothing is measured on them, and any op they run is
    attributed to their parent, which is where it would be reported anyway.
    """
    return (
        kind is None
        and type(module).__module__.startswith("torch.nn.modules.")
        and next(iter(module.children()), None) is None
    )


def install(shared: SessionState, model: nn.Module, stack: ExitStack) -> None:
    """Find the probed layers of `model` into `shared` and put every hook on `stack`."""
    shared.dynamo_skips_probes = keep_dynamo_out()
    exported = exported_type_names(model)
    tracked: list[torch.Tensor] = []
    scripted: list[str] = []  # ScriptModules that are not inside another one
    script_params: list[torch.Tensor] = []
    parametrized: list[str] = []  # layers whose weight is computed by a parametrization
    flush_before_inplace = None
    for name, module in model.named_modules():
        type_name = type_name_of(module, name, exported)
        machinery = in_parametrization(name)
        own = [] if machinery else own_parameters(module)
        kind = None if machinery else kind_of(type_name, bool(own))
        if kind in WEIGHTED_KINDS and parametrize.is_parametrized(module):
            parametrized.append(name)
        in_script = isinstance(module, torch.jit.ScriptModule)
        if in_script and not any(_is_inside(name, outer) for outer in scripted):
            scripted.append(name)
        inplace = getattr(module, "inplace", False) is True
        if not in_script and module is not model and _is_silent_builtin(module, kind):
            if inplace:  # Dropout(inplace=True) would change a held output: reduce first
                flush_before_inplace = flush_before_inplace or make_flush_before_inplace(shared)
                shared.hook_plan.append((module, flush_before_inplace, None))
            continue
        state = None
        if kind is not None:
            family = ACTIVATION_MODULES.get(type_name) if kind == "activation" else None
            state = LayerState(
                name=name, type_name=type_name, kind=kind, source="module", owner=name,
                family=family, tracks_dead=tracks_dead(family), in_script=in_script,
                bounds=saturation_bounds(
                    family, getattr(module, "min_val", None), getattr(module, "max_val", None)
                ),
            )
            shared.states[name] = state
            shared.modules[name] = module
            # Sizes and the main weight are read when a collect lays out its reads, not
            # here: a lazy module (LazyLinear) has no shapes before its first forward.
            shared.direct_params[name] = [param for _, param in own]
            direct = None if in_script else next(iter(module._parameters.items()), None)
            if direct is not None and direct[1] is not None:
                state.param_check = direct
            for local, param in own:
                if param.requires_grad:
                    shared.params.append(TrackedParam(name, local, param))
                    tracked.append(param)
                    if in_script and param.is_leaf:  # only a leaf gets a .grad to read
                        script_params.append(param)
        if in_script:
            continue  # forward hooks cannot be registered on (or run inside) a ScriptModule
        # Known leaf types never call a user-visible activation: the mode stays off inside
        # (and an activation module's own F.relu is not reported a second time).
        observes = (kind is None or kind == "other") and not machinery
        root = module is model
        pre_hook = make_pre_hook(shared, name, observes, inplace, flow_only=_runs_only_children(module), root=root)
        post_hook = make_post_hook(shared, name, state, type_name in _CONV1D_TYPES, root=root)
        if root:  # the model's own hooks stay on: its pre-hook is the clock of `every`
            stack.enter_context(module.register_forward_pre_hook(pre_hook))
            stack.enter_context(module.register_forward_hook(post_hook, always_call=True))
        else:
            shared.hook_plan.append((module, pre_hook, post_hook))
    hook_modules(shared, True)
    shared.param_grads = ParamGradients(params=tracked)
    # Script code runs no output-gradient hook to queue the parameter-gradient read, so each
    # scripted parameter queues it (once per backward) when its .grad has been accumulated.
    if script_params:
        param_grad_ready = make_param_grad_ready(shared)
        for param in script_params:
            stack.callback(param.register_post_accumulate_grad_hook(param_grad_ready).remove)
    shared.static_context = _script_sequential_context(model, shared.states)
    if parametrized:
        shared.limitations += (
            "torch.nn.utils.parametrize (weight_norm, spectral_norm, ...) on "
            f"{', '.join(parametrized)}: the scale of a parametrized weight is not judged against "
            "an init scheme, because reading it runs the parametrization (spectral_norm would "
            "take a power-iteration step); its gradients and update ratios are measured on the "
            "original parameters.",
        )
    if scripted:
        where = "the whole model" if scripted == [""] else ", ".join(scripted)
        shared.limitations += (
            f"TorchScript ({where}): module hooks cannot run on ScriptModules, so activation, "
            "dead-unit, saturation and output-gradient probes did not run there; weights, "
            "parameter gradients and update ratios were measured.",
        )
    trainable = [
        (name, [p for p in own if p.requires_grad]) for name, own in shared.direct_params.items()
    ]
    trainable = [(name, params) for name, params in trainable if params]
    layers_of: dict[int, list[int]] = {}  # id(parameter) -> its layers (tied weights: several)
    for i, (_, params) in enumerate(trainable):
        for param in params:
            layers_of.setdefault(id(param), []).append(i)
    shared.updates = UpdateTracker(
        on_error=shared.internal_error,
        every_step=shared.every == 1,
        layer_names=[name for name, _ in trainable],
        param_layer={key: layers[0] for key, layers in layers_of.items()},
        shared={key: tuple(layers[1:]) for key, layers in layers_of.items() if len(layers) > 1},
    )
    shared.updates.register(stack)
    for param in model.parameters():
        shared.device = param.device
        break


def _is_inside(name: str, outer: str) -> bool:
    return outer == "" or name == outer or name.startswith(outer + ".")


def _is_silent_builtin_name(type_name: str, module: nn.Module) -> bool:
    """A scripted torch.nn leaf that passes its input on without an activation (Dropout, Flatten)."""
    cls = getattr(nn, type_name, None)
    return (
        isinstance(cls, type)
        and cls.__module__.startswith("torch.nn.modules.")
        and type_name not in ACTIVATION_MODULES
        and next(iter(module.children()), None) is None
    )


def _script_sequential_context(model: nn.Module, states: dict[str, LayerState]):
    """The following context (probes/_collect.py) of weighted layers in scripted Sequentials,
    which never report running.

    A scripted Sequential runs its children in order, so that order is the execution order. The
    scan stops at a child whose forward is unknown (a custom module): the follower is then unknown
    (None) unless an activation was already seen. Past the end of the root the follower is "none".
    """
    context: dict[str, tuple[str | None, bool]] = {}
    for prefix, module in model.named_modules():
        if not isinstance(module, torch.jit.ScriptModule) or module.original_name != "Sequential":
            continue
        children = [
            (f"{prefix}.{child}" if prefix else child, sub) for child, sub in module.named_children()
        ]
        for i, (name, _) in enumerate(children):
            state = states.get(name)
            if state is None or state.kind not in WEIGHTED_KINDS:
                continue
            followed_by, normalized = None, False
            ended = True
            for later_name, later in children[i + 1:]:
                later_state = states.get(later_name)
                if later_state is None:
                    if _is_silent_builtin_name(later.original_name, later):
                        continue
                    ended = False
                    break
                if later_state.kind in WEIGHTED_KINDS:
                    followed_by = followed_by or "none"
                    ended = False
                    break
                if later_state.kind == "norm":
                    normalized = True
                elif later_state.kind == "activation" and followed_by is None:
                    followed_by = later_state.family or "none"
            if ended and followed_by is None and module is model:
                followed_by = "none"
            context[name] = (followed_by, normalized)
    return context
