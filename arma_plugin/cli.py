"""The ``arma-plugin`` command: convert, inspect, erf, bench.

    arma-plugin convert timm:vgg11 --out out/vgg11-arma --ar-kernel-size 5
    arma-plugin convert smp:Unet/resnet18 --out out/unet-arma --config arma.json
    arma-plugin inspect out/vgg11-arma --plot fig6.png
    arma-plugin erf --layers 1 3 5 --coeffs 0 0.6 0.8 0.9 --out fig3.png --table
    arma-plugin erf --models timm:resnet18 out/resnet18-arma --input-size 3 64 64 --out erf.png
    arma-plugin bench [benchmark options]

Mistakes in what the user typed (unknown model, missing or unwritable path, bad number, a
config that does not fit the model, a broken checkpoint, weights that cannot be downloaded)
end with one line on stderr and exit code 2, never a traceback. They are recognised where
the input is read, before any work is done where possible, and raised as
:class:`~arma_plugin.usage.UsageError`; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from .version import __version__
from .model_specs import MODEL_SPEC_HELP, build_model, is_library_spec
from .table import format_table
from .usage import USAGE_ERROR, OneLineErrorParser, UsageError, one_line, writable_path
from .validation import positive_int


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
        config = ARMAConfig.from_dict({**data, **{k: v for k, v in flags.items() if v is not None}})
    except ValueError as err:  # ARMAConfig names the field and the allowed values
        raise UsageError(str(err)) from err
    if config.mode == "graph":
        source = "--mode graph" if args.mode == "graph" else "mode 'graph' in --config"
        raise UsageError(f"{source}: armafy would return a torch.fx.GraphModule, which save_pretrained cannot "
                         "rebuild, and convert saves a checkpoint; use mode 'module' (the default)")
    return config


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
    from .convert.config import ConfigMismatchError
    from .hub import CheckpointError, save_pretrained
    from .hub.checkpoint_format import CONFIG_NAME, WEIGHTS_NAME

    out = writable_path(args.out, "--out", directory=True)
    existing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if (out / name).exists()]
    if existing and not args.overwrite:
        raise UsageError(f"--out {args.out!r} already holds a checkpoint ({', '.join(existing)}); pass --overwrite "
                         "to replace it, or give another directory")
    config = _arma_config(args)
    model = build_model(args.model, pretrained=args.pretrained, num_classes=args.num_classes)
    try:
        model, report = armafy(model, config, inplace=True, return_report=True)
    except ConfigMismatchError as err:  # the config names modules this model does not have
        raise UsageError(f"the ARMA config does not fit {args.model}: {err}") from err
    print(report.summary())
    print(f"config: {json.dumps(config.to_dict())}")
    try:
        saved = save_pretrained(model, out)
    except (OSError, CheckpointError) as err:  # the folder cannot take the files (disk, permissions, another save)
        raise UsageError(f"--out {args.out!r}: the checkpoint could not be written: {err}") from err
    print(f"saved to {saved}" + (" (the checkpoint that was there is replaced)" if existing else ""))


# --------------------------------------------------------------------------- inspect
def cmd_inspect(args: argparse.Namespace) -> None:
    from .erf import ar_coefficients, ar_layer_summaries

    if args.per_layer and args.plot is None:
        raise UsageError("--per-layer says how --plot draws the taps; give --plot FIG.png as well")
    plot = None if args.plot is None else writable_path(args.plot, "--plot", directory=False)
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
    if plot is not None:
        from .plots import plot_ar_histogram, plot_ar_layer_histograms

        taps = ar_coefficients(model)
        if args.per_layer:
            plot_ar_layer_histograms(taps, plot, title=f"AR coefficients per layer: {args.path}")
        else:
            plot_ar_histogram({str(args.path): torch.cat([t.flatten() for t in taps.values()])}, plot)
        print(f"\nFig. 6 histogram written to {plot}")


# --------------------------------------------------------------------------- erf
# Thm 3's maps hold all but a tail of the ERF's mass; a coefficient near 1 or many wide layers
# make them long. Beyond these sizes the figure (2-D) or the table (1-D) would take minutes.
ERF_FIGURE_MAX_SIDE = 2048
ERF_TABLE_MAX_LENGTH = 1 << 20


# The options of each kind of erf run; the other kind refuses them. Their defaults are set
# here, after parsing, so that an option given is told from one left out.
THEOREM3_OPTIONS = ("layers", "coeffs", "kernel_size", "dilations", "table", "json")
MODELS_OPTIONS = ("input_size", "samples", "pretrained", "trust_factories")
ERF_DEFAULTS = {"layers": [1, 3, 5], "coeffs": [0.0, 0.6, 0.8, 0.9], "kernel_size": 3, "dilations": [1],
                "input_size": [3, 64, 64], "samples": 16}


def cmd_erf(args: argparse.Namespace) -> None:
    foreign = [name for name in (THEOREM3_OPTIONS if args.models else MODELS_OPTIONS)
               if getattr(args, name) not in (None, False, ())]
    if foreign:
        flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
        verb = "apply" if len(foreign) > 1 else "applies"
        raise UsageError(f"{flags} {verb} only {'without' if args.models else 'with'} --models: with --models the "
                         "ERF of each model is measured, without it Thm 3's linear networks are")
    for name, default in ERF_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.models:
        _erf_of_models(args)
        return
    if args.out is None and not (args.table or args.json):
        raise UsageError("nothing to do: give --out FIG.png and/or --table/--json")
    out = None if args.out is None else writable_path(args.out, "--out", directory=False)
    _check_theorem3_sizes(args)
    from .erf import radius_table

    if args.table or args.json:
        rows = radius_table(args.layers, args.coeffs, args.kernel_size, args.dilations)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(format_table(["d", "L", "a", "measured r", "Thm 3 r", "rel. error"],
                                [(r["dilation"], r["layers"], r["ar_coeff"], r["measured"], r["theoretical"],
                                  f"{r['rel_error']:.1e}") for r in rows]))
    if out is not None:
        from .plots import plot_erf_grid

        for d in args.dilations:
            path = out if len(args.dilations) == 1 else out.with_stem(f"{out.stem}_d{d}")
            plot_erf_grid(args.layers, args.coeffs, path, kernel_size=args.kernel_size, dilation=d)
            print(f"Fig. 3 written to {path}")


def _check_theorem3_sizes(args: argparse.Namespace) -> None:
    """Refuse a grid whose largest ERF map exceeds the size limits, before any is computed."""
    from .erf import support_length
    from .plots import ERF_GRID_TAIL

    limits = [({}, ERF_TABLE_MAX_LENGTH, "--table/--json")] if args.table or args.json else []
    if args.out is not None:
        limits.append(({"tail": ERF_GRID_TAIL}, ERF_FIGURE_MAX_SIDE, "--out"))
    for tail, limit, flag in limits:
        length, layers, a, d = max((support_length(n, args.kernel_size, d, a, **tail), n, a, d)
                                   for n in args.layers for a in args.coeffs for d in args.dilations)
        if length > limit:
            raise UsageError(f"--layers {layers} --coeffs {a:g} --kernel-size {args.kernel_size} --dilations {d}: "
                             f"the ERF map for {flag} would be {length} pixels long, more than {limit}; "
                             "give a smaller coefficient, fewer layers or a smaller kernel/dilation")


def _erf_of_models(args: argparse.Namespace) -> None:
    from .erf import erf_map, erf_radius

    out = None if args.out is None else writable_path(args.out, "--out", directory=False)
    erfs = {}
    for spec in args.models:
        model = build_model(spec, pretrained=args.pretrained and is_library_spec(spec),
                            trust_factories=args.trust_factories)
        if hasattr(model, "forward_features"):
            model = _FeatureMap(model)
        _check_feature_map(model, spec, args.input_size)
        erfs[spec] = erf_map(model, args.input_size, n_samples=args.samples)
    print(format_table(["model", "r (eq. 3)", "r (about mean)"],
                        [(spec, erf_radius(e), erf_radius(e, about="mean")) for spec, e in erfs.items()]))
    if out is not None:
        from .plots import plot_erf_comparison

        plot_erf_comparison(erfs, out)
        print(f"ERF maps written to {out}")


def _check_feature_map(model: nn.Module, spec: str, input_size: Sequence[int]) -> None:
    """One eval-mode forward of a zero input of ``--input-size``: the model must accept it and
    return a ``[B, C, H, W]`` feature map, or the size (channels, too small a map) is refused."""
    param = next(model.parameters(), None)
    like = {} if param is None else {"dtype": param.dtype, "device": param.device}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_size, **like))
    except RuntimeError as err:  # torch's shape checks: wrong channel count, map smaller than a kernel
        size = " ".join(map(str, input_size))
        raise UsageError(f"{spec} cannot run on --input-size {size} (C H W): {err}") from err
    finally:
        model.train(was_training)
    if not (isinstance(out, torch.Tensor) and out.dim() == 4):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"{spec} returns {shape}, not a [B, C, H, W] feature map, so it has no ERF to draw")


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
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{convert,inspect,erf,bench}")

    convert = sub.add_parser("convert", help="create a timm/SMP model, armafy it, save_pretrained",
                             description="Create a model, armafy it (identity at init), print the conversion "
                                         "report and save it with save_pretrained. Flags override --config.")
    convert.add_argument("model", help="timm:NAME or smp:ARCH/ENCODER")
    convert.add_argument("--out", required=True, help="directory to write model.safetensors, config.json, README.md")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace the checkpoint --out already holds (refused without this flag)")
    convert.add_argument("--config", help="ARMAConfig as a JSON file or an inline JSON object")
    convert.add_argument("--ar-kernel-size", type=int, help="AR filter size 2Q+1 (3, 5, ...)")
    convert.add_argument("--boundary", choices=("circular", "zeros"))
    convert.add_argument("--reparam", action=argparse.BooleanOptionalAction, default=None,
                         help="stable re-parameterisation (Thm 7); default on")
    convert.add_argument("--target-modules", nargs="+", help="convert only these convs (names or name suffixes)")
    convert.add_argument("--exclude-modules", nargs="+", help="leave these convs alone")
    convert.add_argument("--include-pointwise", action="store_true", default=None, help="also convert 1x1 convs")
    convert.add_argument("--mode", choices=("module", "graph"),
                         help="ARMAConfig.mode; 'graph' is refused: a torch.fx.GraphModule cannot be saved")
    convert.add_argument("--pretrained", action="store_true", help="download pretrained weights (default: random init)")
    convert.add_argument("--num-classes", type=positive_int, help="head size (timm num_classes, SMP classes)")
    convert.set_defaults(run=cmd_convert)

    inspect = sub.add_parser("inspect", help="summary and AR tap statistics of a checkpoint",
                             description="Conversion summary and per-layer AR tap statistics (mean |tap|, max, "
                                         "implied 1-D ERF radius) of a save_pretrained checkpoint.")
    inspect.add_argument("path", help="checkpoint directory or Hub repo id")
    inspect.add_argument("--plot", type=_png_path, help="write the Fig. 6 histogram of AR coefficients to this PNG")
    inspect.add_argument("--per-layer", action="store_true", help="one histogram per layer (rows of a heat map) instead of pooled")
    _add_trust_factories(inspect)
    inspect.set_defaults(run=cmd_inspect)

    erf = sub.add_parser("erf", help="Fig. 3 and Thm 3 table, or ERF maps of models",
                         description="Without --models: ERF of Thm 3's linear ARMA networks, Fig. 3 (--out) and "
                                     "measured vs theoretical radius (--table, --json). With --models: ERF maps of "
                                     "the given models side by side (e.g. before and after armafy + fine-tuning).")
    erf.add_argument("--layers", type=positive_int, nargs="+", help="depths L (default: 1 3 5)")
    erf.add_argument("--coeffs", type=_probability, nargs="+", help="AR coefficients a (default: 0 0.6 0.8 0.9)")
    erf.add_argument("--kernel-size", type=positive_int, help="MA kernel size K (default: 3)")
    erf.add_argument("--dilations", type=positive_int, nargs="+", help="MA dilations d (default: 1)")
    erf.add_argument("--table", action="store_true", help="print measured vs Thm 3 radius as a markdown table")
    erf.add_argument("--json", action="store_true", help="print the table as JSON")
    erf.add_argument("--out", type=_png_path, help="PNG to write (Fig. 3, one per dilation; or the model comparison)")
    erf.add_argument("--models", nargs="+", metavar="MODEL", help=MODEL_SPEC_HELP)
    erf.add_argument("--input-size", type=positive_int, nargs=3, metavar=("C", "H", "W"),
                     help="input of each model (default: 3 64 64)")
    erf.add_argument("--samples", type=positive_int, help="random inputs per model (default: 16)")
    erf.add_argument("--pretrained", action="store_true",
                     help="pretrained weights for the timm:/smp: models (checkpoints load their own)")
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
    from huggingface_hub.utils import logging as hub_logging

    verbosity = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()  # an unreachable Hub is reported once, not as a warning per retry
    try:
        status = args.run(args) or 0
    except UsageError as err:
        print(f"arma-plugin {args.command}: error: {one_line(err)}", file=sys.stderr)
        return USAGE_ERROR
    finally:
        hub_logging.set_verbosity(verbosity)
    return status


if __name__ == "__main__":
    sys.exit(main())
