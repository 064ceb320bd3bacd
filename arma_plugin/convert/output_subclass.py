"""Give an existing module a child that post-processes its output, keeping its class.

Used for ``Conv2d`` subclasses (timm's ``Conv2dSame``, ``StdConv2d``, ``ScaledStdConv2d``,
SMP's ...), whose own ``forward`` (same padding, weight standardisation) must keep running
with the AR solve (Su et al., Def. 1: ``Y = A^{-1} (W * X)``) after it, and for inserting
a :class:`NonLocal2d` after a named module.

Design: the instance's ``__class__`` is swapped to a subclass ``ARMA<Base>`` created once per
base class, ``(OutputMixin, Base)``, whose ``forward`` is ``child(Base.forward(x))``.
Why this and not the alternatives:

* a wrapper module would rename state-dict keys (``conv.weight`` -> ``conv.conv.weight``) and
  break ``isinstance(m, Conv2dSame)``; the subclass keeps both, plus every attribute the base's
  ``__init__`` set (nothing is re-constructed, parameters are not copied);
* a forward hook is invisible in ``repr``, dropped by code that calls ``.forward`` directly and
  by fx leaf tracing of the module's class; the subclass is a normal ``nn.Module`` that fx treats
  as a ``Conv2d`` leaf and ``torch.compile`` inlines;
* classes made at run time cannot be pickled by reference, so the mixin defines
  ``__reduce_ex__``: it records the base class (importable) and rebuilds ``ARMA<Base>`` from it.
  ``copy.deepcopy``, ``torch.save(model)`` / ``torch.load(..., weights_only=False)`` and
  multiprocessing (DDP spawn) all go through that path.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

_SUBCLASSES: dict[tuple[type, type], type] = {}


class OutputMixin:
    """Base of the mixins below; makes instances of the run-time classes picklable."""

    def __reduce_ex__(self, protocol: int):
        return _rebuild, (type(self)._output_chain,), self.__getstate__()


class AROutputMixin(OutputMixin):
    """Runs the base ``forward`` then the child ``ar`` (an ``AutoRegressive2d``): the
    state-dict key is ``<conv>.ar.alpha``."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.ar(super().forward(*args, **kwargs))


class NonLocalOutputMixin(OutputMixin):
    """Runs the base ``forward`` then the child ``nonlocal_block`` (a ``NonLocal2d``)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.nonlocal_block(super().forward(*args, **kwargs))


_CHILD = {AROutputMixin: "ar", NonLocalOutputMixin: "nonlocal_block"}
_PREFIX = {AROutputMixin: "ARMA", NonLocalOutputMixin: "NonLocal"}


def output_subclass(mixin: type[OutputMixin], base: type[nn.Module]) -> type[nn.Module]:
    """The (cached) class ``(mixin, base)``, named e.g. ``ARMAConv2dSame``. ``base`` may itself be
    such a class (a non-local block after an ARMA ``Conv2dSame``): each mixin's ``forward`` calls
    ``super().forward``, so the children run innermost first."""
    key = (mixin, base)
    if key not in _SUBCLASSES:
        name = _PREFIX[mixin] + base.__name__
        chain = getattr(base, "_output_chain", (base,)) + (mixin,)
        _SUBCLASSES[key] = type(name, (mixin, base),
                                {"__module__": __name__, "__qualname__": name, "_output_chain": chain})
    return _SUBCLASSES[key]


def _rebuild(chain: tuple[type, ...]) -> nn.Module:
    cls = chain[0]
    for mixin in chain[1:]:
        cls = output_subclass(mixin, cls)
    return object.__new__(cls)


def attach_output_child(module: nn.Module, mixin: type[OutputMixin], child: nn.Module) -> nn.Module:
    """Swap ``module``'s class to ``(mixin, type(module))`` and register ``child`` (in place)."""
    if isinstance(module, mixin):
        raise ValueError(f"{type(module).__name__} already has a {_CHILD[mixin]!r} output child")
    module.__class__ = output_subclass(mixin, type(module))
    setattr(module, _CHILD[mixin], child)
    return module
