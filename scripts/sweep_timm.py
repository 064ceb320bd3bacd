"""armafy every timm model family: the smallest model of each, identity check, conversion counts.

Supported: every module in ``timm.list_modules()``; the smallest model by parameter count
among the ``--max-candidates`` likeliest-small names
(counted on the meta device, no memory, no download); ``pretrained=False``; CPU, float32,
eval mode. Input: ``--size`` (default 64) where the model accepts it (``img_size=`` for
fixed-size models), else the model's own ``pretrained_cfg`` input size.

    python scripts/sweep_timm.py                       # all families, table on stdout
    python scripts/sweep_timm.py --families resnet vgg --json sweep.json

Columns: traced (fx trace) or fallback (module walk, with the trace error in the JSON), convs
seen / converted / skipped by reason, identity error ``max|armafied - original| / max|original|``
(target <= 1e-5), seconds for the whole row.
"""
from __future__ import annotations

import argparse
import json
import signal
import time
from typing import Any

import timm
import torch

from arma_plugin import armafy
from arma_plugin.validation import positive_int
from arma_plugin.convert import SkipReason
from arma_plugin.table import format_table

SHORT_REASON = {SkipReason.POINTWISE: "1x1", SkipReason.NEVER_CALLED: "unused",
                SkipReason.USED_FUNCTIONALLY: "functional", SkipReason.FUNCTIONAL_IN_MODULE_MODE: "F.conv2d",
                SkipReason.ANISOTROPIC_DILATION: "dil"}


class RowTimeout(Exception):
    """A family took longer than ``--timeout`` seconds (raised from SIGALRM)."""


def _on_alarm(signum, frame):
    raise RowTimeout("timed out")


SMALL_HINTS = ("test", "atto", "femto", "pico", "nano", "xxs", "tiny", "xs", "mini", "small", "s0", "b0", "lite")


def _size_hint(name: str) -> int:
    """Rank of the first small-model token in the name (lower = likely smaller)."""
    return next((i for i, token in enumerate(SMALL_HINTS) if token in name), len(SMALL_HINTS))


def smallest_model(family: str, max_candidates: int) -> tuple[str | None, int | None, int]:
    """(name, parameter count, candidates that failed to build): the smallest of the family's
    ``max_candidates`` likeliest-small models, counted on the meta device."""
    best, best_params, failed = None, None, 0
    names = sorted(timm.list_models(module=family), key=_size_hint)[:max_candidates]
    for name in names:
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
            params = sum(p.numel() for p in model.parameters())
        except Exception:
            failed += 1
            continue
        if best_params is None or params < best_params:
            best, best_params = name, params
    return best, best_params, failed


def build_and_run(name: str, size: int) -> tuple[torch.nn.Module, torch.Tensor, Any]:
    """Model and input: ``img_size=size`` if accepted, else ``size`` as is, else the model's size."""
    attempts = [({"img_size": size}, size), ({}, size), ({}, None)]
    last_error = None
    for kwargs, side in attempts:
        try:
            model = timm.create_model(name, pretrained=False, **kwargs).eval()
            c, h, w = model.pretrained_cfg.get("input_size", (3, 224, 224))
            x = torch.randn(1, c, side or h, side or w, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                out = model(x)
            return model, x, out
        except RowTimeout:
            raise
        except Exception as err:
            last_error = err
    raise RuntimeError(f"original model does not run: {type(last_error).__name__}: {last_error}")


def _flat(out: Any) -> list[torch.Tensor]:
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _flat(o)] if isinstance(out, (list, tuple)) else []


def identity_error(out: Any, ref: Any) -> float:
    pairs = list(zip(_flat(out), _flat(ref)))
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in pairs)
    scale = max(float(b.float().abs().max()) for _, b in pairs)
    return diff / max(scale, 1e-30)


def armafy_row(model: torch.nn.Module, x: torch.Tensor, ref: Any) -> dict[str, Any]:
    """armafy ``model`` and the sweep columns: trace outcome, conv counts, identity error vs ``ref``."""
    arma, report = armafy(model, return_report=True)
    with torch.no_grad():
        out = arma(x)
    return dict(status="ok", traced=report.traced, trace_error=report.trace_error, untraceable=report.untraceable,
                convs=len(report.entries), converted=report.converted, skipped=report.to_dict()["skipped"],
                identity_error=identity_error(out, ref), same_class=type(arma) is type(model))


def sweep_family(family: str, size: int, timeout: int, max_candidates: int) -> dict[str, Any]:
    start = time.perf_counter()
    row: dict[str, Any] = {"family": family}
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(timeout)
    try:
        name, params, failed = smallest_model(family, max_candidates)
        row.update(model=name, params=params, unbuildable=failed)
        if name is None:
            raise RuntimeError("no model of the family builds")
        model, x, ref = build_and_run(name, size)
        row["input"] = list(x.shape)
        row.update(armafy_row(model, x, ref))
    except Exception as err:
        row.update(status="error", error=f"{type(err).__name__}: {err}".splitlines()[0][:300])
    finally:
        signal.alarm(0)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def trace_kind(row: dict[str, Any]) -> str:
    """``fx``, ``fx+N`` (N submodules kept opaque as untraceable) or ``fallback`` (module walk)."""
    if not row["traced"]:
        return "fallback"
    return f"fx+{len(row['untraceable'])}" if row["untraceable"] else "fx"


def sweep_table(rows: list[dict[str, Any]], leading: tuple[str, ...] = ("family", "model")) -> str:
    """Aligned text table of sweep rows; ``leading`` names the row-identifying columns."""
    lines = []
    for r in rows:
        ident = tuple(r.get(k) for k in leading)
        if r["status"] != "ok":
            lines.append((*ident, r["status"].upper(), "", "", r["error"][:60], "", r["seconds"]))
            continue
        skipped = " ".join(f"{SHORT_REASON.get(k, k)}:{v}" for k, v in sorted(r["skipped"].items()))
        lines.append((*ident, trace_kind(r), r["convs"], r["converted"], skipped, f"{r['identity_error']:.1e}",
                      r["seconds"]))
    return format_table((*leading, "trace", "convs", "conv'd", "skipped", "identity err", "s"), lines,
                        markdown=False)


def summary(rows: list[dict[str, Any]], tol: float) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    exact = [r for r in ok if r["identity_error"] <= tol]
    traced = [r for r in ok if r["traced"]]
    return (f"{len(rows)} families: {len(ok)} converted, {len(rows) - len(ok)} errors; "
            f"{len(traced)} traced, {len(ok) - len(traced)} module-walk fallback; "
            f"identity error <= {tol:g}: {len(exact)}/{len(ok)}; "
            f"convs converted {sum(r['converted'] for r in ok)} of {sum(r['convs'] for r in ok)} seen")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", help="timm module names (default: timm.list_modules())")
    parser.add_argument("--size", type=positive_int, default=64, help="input side where the model accepts it")
    parser.add_argument("--timeout", type=positive_int, default=300, help="seconds per family")
    parser.add_argument("--max-candidates", type=positive_int, default=8,
                        help="models per family whose size is counted (likeliest-small names first)")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--tol", type=float, default=1e-5, help="identity-error target")
    parser.add_argument("--json", help="write all rows (with trace errors and skip reasons) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    families = args.families or sorted(timm.list_modules())
    rows = []
    for family in families:
        rows.append(sweep_family(family, args.size, args.timeout, args.max_candidates))
        r = rows[-1]
        print(f"[{len(rows)}/{len(families)}] {family}: {r['status']} {r.get('model')} "
              f"{r.get('identity_error', r.get('error', ''))} {r['seconds']}s", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    print(sweep_table(rows))
    print(summary(rows, args.tol))


if __name__ == "__main__":
    main()
