"""The ``arma-plugin`` command: convert, inspect, erf, bench.

    arma-plugin convert timm:vgg11 --out out/vgg11-arma --ar-kernel-size 5
    arma-plugin convert smp:Unet/resnet18 --out out/unet-arma --config arma.json
    arma-plugin inspect out/vgg11-arma --plot fig6.png
    arma-plugin erf --layers 1 3 5 --coeffs 0 0.6 0.8 0.9 --out fig3.png --table
    arma-plugin erf --models timm:resnet18 out/resnet18-arma --input-size 3 64 64 --out erf.png
    arma-plugin bench [benchmark options]

Mistakes in what the user typed (unknown model, missing path, bad number, a broken
checkpoint) end with one line on stderr and exit code 2, never a traceback. They are
recognised where the input is read and raised as :class:`UsageError`; any other exception
is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import torch
import torch.nn as nn

from .table import format_table
from .validation import positive_int

USAGE_ERROR = 2
MODEL_SPEC_HELP = ("timm:NAME (e.g. timm:vgg11), smp:ARCH/ENCODER (e.g. smp:Unet/resnet18), "
                   "or a checkpoint directory / Hub repo id written by save_pretrained")


class UsageError(Exception):
    """A mistake in the command line: reported as one line, exit code 2."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- models
def build_model(spec: str, *, pretrained: bool = False, num_classes: int | None = None,
                trust_factories: Sequence[str] = ()) -> nn.Module:
    """A model from ``timm:NAME``, ``smp:ARCH/ENCODER`` or a ``save_pretrained`` directory / Hub id
    (``trust_factories``: see :func:`~arma_plugin.from_pretrained`)."""
    library, sep, name = spec.partition(":")
    if sep and library == "timm":
        import timm

        if not timm.is_model(name):
            raise UsageError(f"unknown timm model {name!r} (list them with timm.list_models())")
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    if sep and library == "smp":
        import segmentation_models_pytorch as smp

        arch, slash, encoder = name.partition("/")
        model_class = getattr(smp, arch, None)
        if not slash or not encoder or not (isinstance(model_class, type)
                                            and issubclass(model_class, smp.base.SegmentationModel)):
            raise UsageError(f"smp model must look like smp:ARCH/ENCODER with ARCH an SMP architecture "
                             f"(Unet, FPN, DeepLabV3, ...), got {spec!r}")
        kwargs = {} if num_classes is None else {"classes": num_classes}
        try:
            return model_class(encoder_name=encoder, encoder_weights="imagenet" if pretrained else None, **kwargs)
        except (KeyError, ValueError) as err:
            raise UsageError(f"cannot build {spec}: {err}") from err
    from .hub import from_pretrained

    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if looks_like_path and not Path(spec).expanduser().is_dir():
        raise UsageError(f"no checkpoint directory {spec!r}; a model is {MODEL_SPEC_HELP}")
    if num_classes is not None or pretrained:
        raise UsageError(f"--num-classes and --pretrained apply to timm:/smp: models, not to checkpoint {spec!r}")
    from .hub import CheckpointError

    try:
        return from_pretrained(Path(spec).expanduser() if looks_like_path else spec, trust_factories=trust_factories)
    except CheckpointError as err:  # a missing or broken checkpoint is the user's input, not a bug
        raise UsageError(str(err)) from err


class _FeatureMap(nn.Module):
    """A timm classifier's spatial features (``forward_features``), so its ERF can be measured."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


# --------------------------------------------------------------------------- convert
_JSON_KINDS = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}


def _arma_config(args: argparse.Namespace):
    from .convert import ARMAConfig

    data = {} if args.config is None else _config_json(args.config)
    flags = {"ar_kernel_size": args.ar_kernel_size, "boundary": args.boundary, "reparam": args.reparam,
             "target_modules": args.target_modules, "exclude_modules": args.exclude_modules,
             "include_pointwise": args.include_pointwise, "mode": args.mode}
    try:
        return ARMAConfig.from_dict({**data, **{k: v for k, v in flags.items() if v is not None}})
    except ValueError as err:  # ARMAConfig names the field and the allowed values
        raise UsageError(str(err)) from err


def _config_json(config: str) -> dict:
    """The JSON object of ``--config``: a file, or JSON written inline (starting with ``{`` or ``[``)."""
    if config.lstrip()[:1] in ("{", "["):
        text, source = config, "inline value"
    elif Path(config).is_file():
        source = f"file {config!r}"
        try:
            text = Path(config).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"--config {source} cannot be read as UTF-8 text: {err}") from err
    else:
        raise UsageError(f"--config: no such file {config!r} (give a JSON file or an inline JSON object)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"--config {source} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        kind = _JSON_KINDS.get(type(data), type(data).__name__)
        raise UsageError(f"--config {source} must hold a JSON object of ARMAConfig fields "
                         f"({{\"ar_kernel_size\": 5, ...}}), got a JSON {kind}")
    return data


def cmd_convert(args: argparse.Namespace) -> None:
    from .convert import armafy
    from .hub import save_pretrained

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is an existing file; give a directory (created if missing)")
    config = _arma_config(args)
    model = build_model(args.model, pretrained=args.pretrained, num_classes=args.num_classes)
    model, report = armafy(model, config, inplace=True, return_report=True)
    print(report.summary())
    print(f"config: {json.dumps(config.to_dict())}")
    out = save_pretrained(model, args.out)
    print(f"saved to {out}")


# --------------------------------------------------------------------------- inspect
def cmd_inspect(args: argparse.Namespace) -> None:
    from .erf import ar_coefficients, ar_layer_summaries

    model = build_model(args.path, trust_factories=args.trust_factories)
    print(f"model: {type(model).__module__}.{type(model).__qualname__}")
    config, report = getattr(model, "arma_config", None), getattr(model, "arma_report", None)
    if config is not None:
        print(f"arma_config: {json.dumps(config.to_dict())}")
    if report is not None:
        print(report.summary())
    summaries = ar_layer_summaries(model)
    if not summaries:
        raise UsageError(f"{args.path} has no AR layers (is it an armafied model?)")
    n_params = sum(s.channels * s.factors * 4 for s in summaries)
    print(f"{len(summaries)} AR layers, {n_params} AR parameters; radius: implied 1-D ERF radius of the layer "
          "(Thm 3 with its taps, uniform MA kernel), mean over channels\n")
    print(format_table(["layer", "channels", "Q", "mean abs tap", "max abs tap", "radius H", "radius W"],
                        [(s.name, s.channels, s.factors, s.mean_abs_tap, s.max_abs_tap, s.radius_h, s.radius_w)
                         for s in summaries]))
    if args.plot is not None:
        from .plots import plot_ar_histogram

        taps = ar_coefficients(model)
        coefficients = taps if args.per_layer else {str(args.path): torch.cat([t.flatten() for t in taps.values()])}
        print(f"\nFig. 6 histogram written to {plot_ar_histogram(coefficients, args.plot)}")


# --------------------------------------------------------------------------- erf
def cmd_erf(args: argparse.Namespace) -> None:
    if args.models:
        if args.table or args.json:
            raise UsageError("--table/--json compare Thm 3's networks with the theorem; with --models the "
                             "radii of the models are printed anyway")
        _erf_of_models(args)
        return
    from .erf import radius_table

    if args.table or args.json:
        rows = radius_table(args.layers, args.coeffs, args.kernel_size, args.dilations)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(format_table(["d", "L", "a", "measured r", "Thm 3 r", "rel. error"],
                                [(r["dilation"], r["layers"], r["ar_coeff"], r["measured"], r["theoretical"],
                                  f"{r['rel_error']:.1e}") for r in rows]))
    if args.out is not None:
        from .plots import plot_erf_grid

        for d in args.dilations:
            path = Path(args.out) if len(args.dilations) == 1 else Path(args.out).with_stem(f"{Path(args.out).stem}_d{d}")
            plot_erf_grid(args.layers, args.coeffs, path, kernel_size=args.kernel_size, dilation=d)
            print(f"Fig. 3 written to {path}")
    if args.out is None and not (args.table or args.json):
        raise UsageError("nothing to do: give --out FIG.png and/or --table/--json")


def _erf_of_models(args: argparse.Namespace) -> None:
    from .erf import erf_map, erf_radius

    erfs = {}
    for spec in args.models:
        model = build_model(spec, pretrained=args.pretrained, trust_factories=args.trust_factories)
        if hasattr(model, "forward_features"):
            model = _FeatureMap(model)
        erfs[spec] = erf_map(model, args.input_size, n_samples=args.samples)
    print(format_table(["model", "r (eq. 3)", "r (about mean)"],
                        [(spec, erf_radius(e), erf_radius(e, about="mean")) for spec, e in erfs.items()]))
    if args.out is not None:
        from .plots import plot_erf_comparison

        plot_erf_comparison(erfs, args.out)
        print(f"ERF maps written to {args.out}")


# --------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from . import benchmark

    return benchmark.main(args.bench_args) or 0


# --------------------------------------------------------------------------- parser
def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"AR coefficient must lie in [0, 1), got {text}")
    return value


def _png_path(text: str) -> str:
    if Path(text).suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"the figure is written as PNG: give a path ending in .png, got {text!r}")
    return text


def _add_trust_factories(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-factories", nargs="+", default=(), metavar="PACKAGE",
                        help="packages a checkpoint's model factory may be imported from although they are not "
                             "installed (e.g. your project's own package in the current directory); see "
                             "docs/checkpoints.md#security")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="arma-plugin", description="ARMA layers (Su et al., NeurIPS 2020) for timm and SMP models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{convert,inspect,erf,bench}")

    convert = sub.add_parser("convert", help="create a timm/SMP model, armafy it, save_pretrained",
                             description="Create a model, armafy it (identity at init), print the conversion "
                                         "report and save it with save_pretrained. Flags override --config.")
    convert.add_argument("model", help="timm:NAME or smp:ARCH/ENCODER")
    convert.add_argument("--out", required=True, help="directory to write model.safetensors, config.json, README.md")
    convert.add_argument("--config", help="ARMAConfig as a JSON file or an inline JSON object")
    convert.add_argument("--ar-kernel-size", type=int, help="AR filter size 2Q+1 (3, 5, ...)")
    convert.add_argument("--boundary", choices=("circular", "zeros"))
    convert.add_argument("--reparam", action=argparse.BooleanOptionalAction, default=None,
                         help="stable re-parameterisation (Thm 7); default on")
    convert.add_argument("--target-modules", nargs="+", help="convert only these convs (names or name suffixes)")
    convert.add_argument("--exclude-modules", nargs="+", help="leave these convs alone")
    convert.add_argument("--include-pointwise", action="store_true", default=None, help="also convert 1x1 convs")
    convert.add_argument("--mode", choices=("module", "graph"))
    convert.add_argument("--pretrained", action="store_true", help="download pretrained weights (default: random init)")
    convert.add_argument("--num-classes", type=positive_int, help="head size (timm num_classes, SMP classes)")
    convert.set_defaults(run=cmd_convert)

    inspect = sub.add_parser("inspect", help="summary and AR tap statistics of a checkpoint",
                             description="Conversion summary and per-layer AR tap statistics (mean |tap|, max, "
                                         "implied 1-D ERF radius) of a save_pretrained checkpoint.")
    inspect.add_argument("path", help="checkpoint directory or Hub repo id")
    inspect.add_argument("--plot", type=_png_path, help="write the Fig. 6 histogram of AR coefficients to this PNG")
    inspect.add_argument("--per-layer", action="store_true", help="one histogram outline per layer instead of pooled")
    _add_trust_factories(inspect)
    inspect.set_defaults(run=cmd_inspect)

    erf = sub.add_parser("erf", help="Fig. 3 and Thm 3 table, or ERF maps of models",
                         description="Without --models: ERF of Thm 3's linear ARMA networks, Fig. 3 (--out) and "
                                     "measured vs theoretical radius (--table, --json). With --models: ERF maps of "
                                     "the given models side by side (e.g. before and after armafy + fine-tuning).")
    erf.add_argument("--layers", type=positive_int, nargs="+", default=[1, 3, 5], help="depths L")
    erf.add_argument("--coeffs", type=_probability, nargs="+", default=[0.0, 0.6, 0.8, 0.9], help="AR coefficients a")
    erf.add_argument("--kernel-size", type=positive_int, default=3, help="MA kernel size K")
    erf.add_argument("--dilations", type=positive_int, nargs="+", default=[1], help="MA dilations d")
    erf.add_argument("--table", action="store_true", help="print measured vs Thm 3 radius as a markdown table")
    erf.add_argument("--json", action="store_true", help="print the table as JSON")
    erf.add_argument("--out", type=_png_path, help="PNG to write (Fig. 3, one per dilation; or the model comparison)")
    erf.add_argument("--models", nargs="+", metavar="MODEL", help=MODEL_SPEC_HELP)
    erf.add_argument("--input-size", type=positive_int, nargs=3, default=[3, 64, 64], metavar=("C", "H", "W"))
    erf.add_argument("--samples", type=positive_int, default=16, help="random inputs per model")
    erf.add_argument("--pretrained", action="store_true", help="pretrained weights for timm:/smp: models")
    _add_trust_factories(erf)
    erf.set_defaults(run=cmd_erf)

    bench = sub.add_parser("bench", help="AR layer benchmark (arma_plugin.benchmark); options pass through",
                           add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of the benchmark (see bench --help)")
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["bench"]:  # everything after "bench", --help included, belongs to the benchmark
        args = argparse.Namespace(command="bench", run=cmd_bench, bench_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        status = args.run(args) or 0
    except UsageError as err:
        message = " ".join(str(err).split())  # one line, whatever the exception's layout
        print(f"arma-plugin {args.command}: error: {message}", file=sys.stderr)
        return USAGE_ERROR
    return status


if __name__ == "__main__":
    sys.exit(main())
