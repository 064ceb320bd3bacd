"""Give an existing module a child that post-processes its output, keeping its class.

Used for ``Conv2d`` subclasses (timm's ``Conv2dSame``, ``StdConv2d``, ``ScaledStdConv2d``,
SMP's ...), whose own ``forward`` (same padding, weight standardisation) must keep running
with the AR solve (Su et al., Def. 1: ``Y = A^{-1} (W * X)``) after it, and for inserting
a :class:`NonLocal2d` after a named module.

Design: the instance's ``__class__`` is swapped to a subclass ``ARMA<Base>`` created once per
base class, ``(OutputMixin, Base)``, whose ``forward`` is ``child(Base.forward(x))`` with the
base's own parameter list (so TorchScript compiles it wherever it compiles the base).
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

import functools
import inspect
import linecache
import types
import typing

import torch.nn as nn

_SUBCLASSES: dict[tuple[type, type], type] = {}


class OutputMixin:
    """Base of the mixins below; makes instances of the run-time classes picklable.

    ``child`` names the module that post-processes the output; the generated ``forward``
    calls the base's ``forward``, kept on the class as ``_<child>_base_forward``.
    """

    child: str = ""

    def __reduce_ex__(self, protocol: int):
        return _rebuild, (type(self)._output_chain,), self.__getstate__()


class AROutputMixin(OutputMixin):
    """Runs the base ``forward`` then the child ``ar`` (an ``AutoRegressive2d``): the
    state-dict key is ``<conv>.ar.alpha``."""

    child = "ar"


class NonLocalOutputMixin(OutputMixin):
    """Runs the base ``forward`` then the child ``nonlocal_block`` (a ``NonLocal2d``)."""

    child = "nonlocal_block"


_PREFIX = {AROutputMixin: "ARMA", NonLocalOutputMixin: "NonLocal"}

_ARGUMENT = {inspect.Parameter.POSITIONAL_ONLY: "{}", inspect.Parameter.POSITIONAL_OR_KEYWORD: "{}",
             inspect.Parameter.VAR_POSITIONAL: "*{}", inspect.Parameter.KEYWORD_ONLY: "{0}={0}",
             inspect.Parameter.VAR_KEYWORD: "**{}"}


def _forward_through(child: str, base_forward, class_name: str):
    """``forward`` with exactly ``base_forward``'s parameters (names, kinds, defaults, annotations)
    returning ``self.<child>(self._<child>_base_forward(...))``.

    Generated rather than ``forward(self, *args, **kwargs)``: TorchScript compiles only explicit
    parameter lists, so the class is scriptable wherever its base is. The source is registered
    with ``linecache`` because TorchScript reads a method's source to compile it.
    """
    signature = inspect.signature(base_forward)
    parameters = list(signature.parameters.values())
    try:  # resolved objects: postponed (string) annotations would need the base module's names
        hints = typing.get_type_hints(base_forward)
    except (NameError, TypeError):  # unresolvable hints: unannotated parameters are tensors to TorchScript
        hints = {}
    # TorchScript takes parameter types from the source text: each annotation is a name bound
    # to the resolved hint in the function's globals
    namespace = {f"_annotation_{p.name}": hints[p.name] for p in parameters if p.name in hints}
    bare = signature.replace(parameters=[p.replace(
        annotation=f"_annotation_{p.name}" if p.name in hints else inspect.Parameter.empty,
        default=inspect.Parameter.empty) for p in parameters], return_annotation=inspect.Signature.empty)
    header = str(bare).replace("'", "")  # annotations print as quoted strings
    arguments = ", ".join(_ARGUMENT[p.kind].format(p.name) for p in parameters[1:])
    source = f"def forward{header}:\n    return self.{child}(self._{child}_base_forward({arguments}))\n"
    filename = f"<arma_plugin output subclass {class_name}.forward>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    forward = namespace["forward"]
    forward.__defaults__ = base_forward.__defaults__
    forward.__kwdefaults__ = base_forward.__kwdefaults__
    forward.__qualname__ = f"{class_name}.forward"
    return forward


def _renamed(function, name: str):
    """``function`` under another ``__name__``: TorchScript compiles a method called through
    ``self`` under its function's name, and the base's ``forward`` must not collide with ours."""
    renamed = types.FunctionType(function.__code__, function.__globals__, name, function.__defaults__,
                                 function.__closure__)
    functools.update_wrapper(renamed, function)
    renamed.__name__ = name
    return renamed


def output_subclass(mixin: type[OutputMixin], base: type[nn.Module]) -> type[nn.Module]:
    """The (cached) class ``(mixin, base)``, named e.g. ``ARMAConv2dSame``. ``base`` may itself be
    such a class (a non-local block after an ARMA ``Conv2dSame``): each level calls the one below
    through its own ``_<child>_base_forward``, so the children run innermost first."""
    key = (mixin, base)
    if key not in _SUBCLASSES:
        name = _PREFIX[mixin] + base.__name__
        chain = getattr(base, "_output_chain", (base,)) + (mixin,)
        _SUBCLASSES[key] = type(name, (mixin, base), {
            "__module__": __name__, "__qualname__": name, "_output_chain": chain,
            "forward": _forward_through(mixin.child, base.forward, name),
            f"_{mixin.child}_base_forward": _renamed(base.forward, f"_{mixin.child}_base_forward")})
    return _SUBCLASSES[key]


def _rebuild(chain: tuple[type, ...]) -> nn.Module:
    cls = chain[0]
    for mixin in chain[1:]:
        cls = output_subclass(mixin, cls)
    return object.__new__(cls)


def attach_output_child(module: nn.Module, mixin: type[OutputMixin], child: nn.Module) -> nn.Module:
    """Swap ``module``'s class to ``(mixin, type(module))`` and register ``child`` (in place)."""
    if isinstance(module, mixin):
        raise ValueError(f"{type(module).__name__} already has a {mixin.child!r} output child")
    module.__class__ = output_subclass(mixin, type(module))
    setattr(module, mixin.child, child)
    return module
