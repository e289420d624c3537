"""Helpers for any network that contains escnn modules: mode-independent state dicts and export to plain torch.

**Checkpoints.** escnn's steerable layers cache their expanded kernel in buffers whose presence depends on
the module's history: ``R2Conv``/``R3Conv`` (and their transposed versions) hold ``filter`` and
``expanded_bias``, ``escnn.nn.Linear`` holds ``matrix`` and ``expanded_bias``. They are created by ``.eval()`` (computed from the current weights), deleted by
``.train()``, and a freshly built convolution already holds an all-zero ``filter``. A state dict saved in
eval mode (as Lightning does at validation end) therefore has keys a train-mode model lacks, and the
reverse; and a state dict loaded non-strictly into an eval-mode model would leave a stale cached filter.

:func:`make_state_dict_mode_independent` fixes this once, on the modules themselves, so it holds for
``nn.Module.state_dict``/``load_state_dict``, Lightning checkpoints and ``load_from_checkpoint`` alike:

* saving never writes the cached buffers (the key set is always the train-mode one: the learnable
  weights plus escnn's fixed buffers such as sampled bases);
* loading ignores cached buffers found in old state dicts, and afterwards rebuilds the cache of every
  module that is in eval mode from the weights just loaded.

:class:`GeometricWrapper` (a ``torch.Tensor`` -> ``torch.Tensor`` module around an escnn module) applies
it at construction, so a model that wraps its escnn parts in it needs nothing else.

**Inference.** :func:`export_for_inference` returns an eval-mode copy of a model in which every
:class:`GeometricWrapper` is replaced by escnn's ``export()`` (plain ``Conv2d``/``BatchNorm``/``ReLU``...
with the expanded filters): same logits, no basis expansion or type checks at run time.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from escnn import nn as enn
from escnn.nn.modules.conv.rd_convolution import _RdConv
from escnn.nn.modules.conv.rd_transposed_convolution import _RdConvTransposed

# escnn class -> the buffers it creates in eval mode and deletes in train mode.
MODE_DEPENDENT_BUFFERS: dict[type, tuple[str, ...]] = {
    _RdConv: ("filter", "expanded_bias"),
    _RdConvTransposed: ("filter", "expanded_bias"),
    enn.Linear: ("matrix", "expanded_bias"),
}
_HOOKED = "_gevit_mode_independent_state_dict"


def mode_dependent_buffers(module: nn.Module) -> tuple[str, ...]:
    """Names of the eval-mode cache buffers of ``module`` (empty for modules without such a cache)."""
    for cls, names in MODE_DEPENDENT_BUFFERS.items():
        if isinstance(module, cls):
            return names
    return ()


def _drop_cached_buffers_on_save(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    for name in mode_dependent_buffers(module):
        state_dict.pop(prefix + name, None)


def _ignore_cached_buffers_on_load(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
) -> None:
    # Cached buffers in the incoming dict are discarded (they are rebuilt after loading); a buffer the
    # module holds now is fed its own value so that strict loading does not report it as missing.
    for name in mode_dependent_buffers(module):
        state_dict.pop(prefix + name, None)
        current = module._buffers.get(name)
        if current is not None:
            state_dict[prefix + name] = current


def _rebuild_cache_after_load(module: nn.Module, incompatible_keys) -> None:
    if not module.training:
        # escnn recomputes its cache when switching from train to eval mode (on the current weights); built
        # without autograd, the cache is a plain tensor (escnn's own keeps a graph to the weights).
        with torch.no_grad():
            module.train(True)
            module.train(False)


def make_state_dict_mode_independent(model: nn.Module) -> nn.Module:
    """Make the state dict of every escnn layer inside ``model`` independent of train/eval mode (in place).

    Installs, on each escnn module listed in :data:`MODE_DEPENDENT_BUFFERS`, a state-dict hook that
    omits its cached buffers, a load pre-hook that ignores them, and a load post-hook that rebuilds the
    cache of an eval-mode module from the loaded weights. Idempotent; returns ``model``.
    """
    for module in model.modules():
        if not mode_dependent_buffers(module) or getattr(module, _HOOKED, False):
            continue
        module.register_state_dict_post_hook(_drop_cached_buffers_on_save)
        module.register_load_state_dict_pre_hook(_ignore_cached_buffers_on_load)
        module.register_load_state_dict_post_hook(_rebuild_cache_after_load)
        setattr(module, _HOOKED, True)
    return model


class GeometricWrapper(nn.Module):
    """Run an escnn module on plain tensors: ``(B, in_type.size, H, W)`` -> ``(B, out_type.size, H', W')``.

    The input is wrapped as a ``GeometricTensor`` of ``module.in_type`` (so the group acts on it as that
    field type says), the output is unwrapped. The state dict of the escnn layers inside is made
    mode-independent (:func:`make_state_dict_mode_independent`), and :meth:`export` gives the plain
    torch equivalent.
    """

    def __init__(self, module: enn.EquivariantModule):
        super().__init__()
        self.module = make_state_dict_mode_independent(module)
        self.in_type = module.in_type
        self.out_type = module.out_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(enn.GeometricTensor(x, self.in_type)).tensor

    def output_size(self, size: int) -> int:
        """Spatial side of the output for a square input of side ``size``."""
        return int(self.module.evaluate_output_shape((1, self.in_type.size, size, size))[-1])

    def export(self) -> nn.Module:
        """A plain torch module computing the same function in eval mode (uses a copy; ``self`` is untouched)."""
        return export_equivariant(deepcopy_module(self.module))


def deepcopy_module(module: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works in eval mode.

    escnn computes its eval-mode cache (``filter``, ...) from the weights with autograd on, and torch refuses
    to deep-copy such non-leaf tensors; the copy gets detached clones of them instead.
    """
    memo = {id(buffer): buffer.detach().clone() for buffer in module.buffers() if buffer.grad_fn is not None}
    return copy.deepcopy(module, memo)


class FixedDepthwiseConv2d(nn.Module):
    """A depthwise convolution with a fixed filter ``(C, 1, k, k)`` (the export of escnn's antialiased pooling)."""

    def __init__(self, weight: torch.Tensor, stride, padding):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding, groups=x.shape[1])


def export_equivariant(module: enn.EquivariantModule) -> nn.Module:
    """escnn's ``export()`` (modules are set to eval mode), extended to sequences holding antialiased pooling.

    ``escnn.nn.PointwiseAvgPoolAntialiased2D`` has no ``export`` in escnn 1.0.11; it becomes a
    :class:`FixedDepthwiseConv2d` with the same Gaussian filter.
    """
    if isinstance(module, enn.SequentialModule):
        module.eval()
        return nn.Sequential(OrderedDict((name, export_equivariant(child)) for name, child in module._modules.items()))
    if isinstance(module, enn.PointwiseAvgPoolAntialiased2D):
        return FixedDepthwiseConv2d(module.filter, module.stride, module.padding)
    return module.export()


def export_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` whose :class:`GeometricWrapper` parts are plain torch modules.

    The copy computes the same logits as ``model.eval()`` (up to float rounding) without escnn's per-call
    type checks; ``model`` itself is not modified. Intended for inference only: the exported layers hold
    expanded filters, not escnn's basis coefficients, so they cannot be loaded back into ``model``.
    """
    exported = deepcopy_module(model).eval()
    wrappers = [(name, module) for name, module in exported.named_modules() if isinstance(module, GeometricWrapper)]
    for name, wrapper in wrappers:
        if not name:  # the model itself is a wrapper
            return wrapper.export()
        parent_name, _, child_name = name.rpartition(".")
        setattr(exported.get_submodule(parent_name), child_name, wrapper.export())
    return exported
