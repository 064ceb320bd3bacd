"""The ``arma-plugin`` command. Every subcommand runs once as a real subprocess (torch's
start-up costs seconds, so those runs are few and check a lot each); the many bad-input
cases call ``main(argv)`` in-process and check the same exit code and message."""
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from arma_plugin.cli import main
from arma_plugin.erf import theoretical_radius

SCRIPT = Path(sys.executable).with_name("arma-plugin")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# the subprocesses must never wait on the network for a Hub lookup
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    assert SCRIPT.is_file(), f"console script {SCRIPT} missing: pip install -e . declares it"
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=OFFLINE_ENV, timeout=300)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """``main(argv)`` in-process; argparse's own errors leave through ``SystemExit``."""
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def markdown_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]  # skip header, rule


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "test_resnet-arma"
    result = run_cli("convert", "timm:test_resnet", "--out", str(out), "--ar-kernel-size", "5",
                     "--boundary", "zeros", "--num-classes", "3")
    assert result.returncode == 0, result.stderr
    assert "converted" in result.stdout and f"saved to {out}" in result.stdout
    saved = json.loads((out / "config.json").read_text())
    assert saved["arma_config"]["ar_kernel_size"] == 5 and saved["arma_config"]["boundary"] == "zeros"
    assert (out / "model.safetensors").is_file()
    return out


def test_convert_then_inspect_reports_the_taps(checkpoint, tmp_path):
    from arma_plugin.hub import from_pretrained, save_pretrained

    a = 0.6
    model = from_pretrained(checkpoint)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("ar.alpha"):  # reparam taps f_left = g_left = 0, f_right = g_right = -a
                param[..., 0] = param[..., 2] = math.atanh(a)
                param[..., 1] = param[..., 3] = -math.atanh(a)
    kernels = {conv: tuple(model.get_submodule(conv).kernel_size)
               for conv in (name[:-len(".ar.alpha")] for name, _ in model.named_parameters())
               if conv + ".ar.alpha" in dict(model.named_parameters())}
    tuned = save_pretrained(model, tmp_path / "tuned")
    fig6 = tmp_path / "fig6.png"

    result = run_cli("inspect", str(tuned), "--plot", str(fig6))
    assert result.returncode == 0, result.stderr
    assert "armafy [" in result.stdout and '"ar_kernel_size": 5' in result.stdout
    rows = {row[0]: row for row in markdown_rows(result.stdout)}
    assert sorted(rows) == sorted(f"{name}.ar" for name in kernels)
    for name, (kh, kw) in kernels.items():
        _, channels, q, mean_tap, max_tap, radius_h, radius_w = rows[f"{name}.ar"]
        assert q == "2"
        # Q = 2 factors per axis: Thm 3 with two AR layers of coefficient a, one behind a KxK conv
        expected_h = theoretical_radius(2, [kh, 1], 1, a)
        expected_w = theoretical_radius(2, [kw, 1], 1, a)
        # the table prints 4 significant digits; taps pass through float32 tanh
        assert float(mean_tap) == pytest.approx(a / 2, rel=1e-3)
        assert float(max_tap) == pytest.approx(a, rel=1e-3)
        assert float(radius_h) == pytest.approx(expected_h, rel=1e-3)
        assert float(radius_w) == pytest.approx(expected_w, rel=1e-3)
    assert fig6.read_bytes()[:8] == PNG_MAGIC


def test_erf_table_and_figure(tmp_path):
    fig3 = tmp_path / "fig3.png"
    result = run_cli("erf", "--layers", "1", "3", "--coeffs", "0", "0.8", "--table", "--out", str(fig3))
    assert result.returncode == 0, result.stderr
    rows = markdown_rows(result.stdout)
    assert [(r[1], r[2]) for r in rows] == [("1", "0"), ("1", "0.8"), ("3", "0"), ("3", "0.8")]
    for d, num_layers, a, measured, theory, _ in rows:
        assert float(theory) == pytest.approx(theoretical_radius(int(num_layers), 3, int(d), float(a)), rel=1e-3)
        assert float(measured) == pytest.approx(float(theory), rel=1e-3)  # 4 printed significant digits
    assert fig3.read_bytes()[:8] == PNG_MAGIC


def test_bench_runs_the_layer_benchmark():
    result = run_cli("bench", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


@pytest.mark.parametrize("status", [0, 3])
def test_bench_passes_arguments_and_status_through(monkeypatch, capsys, status):
    import arma_plugin

    received = []
    fake = types.ModuleType("arma_plugin.benchmark")
    fake.main = lambda argv: received.append(argv) or status
    monkeypatch.setitem(sys.modules, "arma_plugin.benchmark", fake)
    monkeypatch.setattr(arma_plugin, "benchmark", fake, raising=False)
    code, _, _ = run_main(capsys, "bench", "--help", "--json", "--size", "8")
    assert received == [["--help", "--json", "--size", "8"]]
    assert code == status


def test_user_mistake_is_one_line_and_exit_2():
    result = run_cli("convert", "timm:no_such_model", "--out", "unused")
    assert result.returncode == 2
    assert result.stderr.strip() == ("arma-plugin convert: error: unknown timm model 'no_such_model' "
                                     "(list them with timm.list_models())")


def test_convert_smp_with_config_and_override(tmp_path, capsys):
    out = tmp_path / "unet"
    code, stdout, err = run_main(capsys, "convert", "smp:Unet/tu-test_resnet", "--out", str(out),
                                 "--config", '{"ar_kernel_size": 5, "boundary": "circular"}',
                                 "--boundary", "zeros", "--num-classes", "2")
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["arma_config"]["ar_kernel_size"] == 5  # from --config
    assert saved["arma_config"]["boundary"] == "zeros"  # the flag wins over --config
    assert saved["base"]["model_args"]["classes"] == 2


def test_erf_of_models_side_by_side(checkpoint, tmp_path, capsys):
    figure = tmp_path / "erf.png"
    torch.manual_seed(0)  # timm:test_resnet is built with random weights: fix them (and its dead ReLUs)
    code, stdout, err = run_main(capsys, "erf", "--models", "timm:test_resnet", str(checkpoint),
                                 "--input-size", "3", "32", "32", "--samples", "8", "--out", str(figure))
    assert code == 0, err
    rows = markdown_rows(stdout)
    assert [r[0] for r in rows] == ["timm:test_resnet", str(checkpoint)]
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
    assert figure.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("argv, message", [
    (["convert", "smp:Unet", "--out", "x"], "smp:ARCH/ENCODER"),
    (["convert", "smp:NoSuchArch/resnet18", "--out", "x"], "smp:ARCH/ENCODER"),
    (["convert", "timm:test_resnet", "--out", "x", "--config", "missing.json"], "no such file"),
    (["convert", "timm:test_resnet", "--out", "x", "--config", "{bad json"], "not valid JSON"),
    (["convert", "timm:test_resnet", "--out", "x", "--config", '{"ar_size": 3}'], "unknown keys"),
    (["convert", "timm:test_resnet", "--out", "x", "--ar-kernel-size", "4"], "ar_kernel_size"),
    (["convert", "timm:test_resnet", "--out", "x", "--boundary", "reflect"], "invalid choice"),
    (["convert", "timm:test_resnet"], "--out"),
    (["inspect", "./no/such/checkpoint"], "no checkpoint directory"),
    (["erf", "--coeffs", "1.5"], "[0, 1)"),
    (["erf", "--coeffs", "abc"], "--coeffs"),
    (["erf", "--layers", "0", "--table"], "--layers: must be an integer >= 1, got '0'"),
    (["erf", "--samples", "2.0", "--models", "timm:test_resnet"], "--samples: must be an integer >= 1"),
    (["convert", "timm:test_resnet", "--out", "x", "--config", "[1, 2]"], "must hold a JSON object"),
    (["bench", "--threads", "0"], "--threads: must be an integer >= 1, got '0'"),
    (["bench", "--threads", "-1"], "--threads: must be an integer >= 1, got '-1'"),
    (["bench", "--sizes", "8", "0"], "--sizes: must be an integer >= 1, got '0'"),
    (["erf", "--layers", "1"], "nothing to do"),
    (["erf", "--layers", "1", "--coeffs", "0", "--out", "fig3.jpg"], ".png"),
    (["erf", "--models", "timm:test_resnet", "--input-size", "3", "32"], "--input-size"),
    (["erf", "--models", "timm:test_resnet", "--table"], "--table"),
    (["frobnicate"], "invalid choice"),
    (["inspect", "x", "--per-layer"], "--per-layer says how --plot draws"),
    (["erf", "--coeffs", "0.9999", "--layers", "5", "--out", "fig3.png"], "would be 690756 pixels long, more than 2048"),
    (["erf", "--coeffs", "0.99999", "--table"], "more than 1048576"),
    (["convert", "timm:test_resnet", "--out", "x", "--mode", "graph"], "--mode graph: armafy would return a torch.fx"),
    (["convert", "timm:test_resnet", "--out", "x", "--config", '{"mode": "graph"}'], "mode 'graph' in --config"),
    (["convert", "timm:test_resnet", "--out", ""], "--out is empty"),
    (["erf", "--models", "timm:test_resnet", "--layers", "3"], "--layers applies only without --models"),
    (["erf", "--table", "--input-size", "3", "8", "8"], "--input-size applies only with --models"),
    (["erf", "--out", "f.png", "--samples", "4", "--pretrained"], "--samples, --pretrained apply only with --models"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, message):
    code, _, err = run_main(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_every_subcommand_has_help(capsys):
    for command in ("convert", "inspect", "erf"):
        code, out, _ = run_main(capsys, command, "--help")
        assert code == 0 and "usage: arma-plugin " + command in out
    code, out, _ = run_main(capsys, "--help")
    assert code == 0 and all(c in out for c in ("convert", "inspect", "erf", "bench"))


@pytest.mark.parametrize("content, kind", [("[1, 2]", "array"), ("3", "number"), ('"ar_kernel_size"', "string")])
def test_config_file_must_hold_an_object(tmp_path, capsys, content, kind):
    config = tmp_path / "arma.json"
    config.write_text(content)
    code, _, err = run_main(capsys, "convert", "timm:test_resnet", "--out", str(tmp_path / "out"),
                            "--config", str(config))
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (f"arma-plugin convert: error: --config file {str(config)!r} must hold a JSON object "
                           f'of ARMAConfig fields ({{"ar_kernel_size": 5, ...}}), got a JSON {kind}')


def test_convert_out_must_not_be_a_file(tmp_path, capsys):
    existing = tmp_path / "model.safetensors"
    existing.write_bytes(b"not a directory")
    code, _, err = run_main(capsys, "convert", "timm:test_resnet", "--out", str(existing))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is an existing file" in err
    assert existing.read_bytes() == b"not a directory"  # refused before anything is written


def test_bench_cuda_without_a_gpu_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_main(capsys, "bench", "--device", "cuda", "--sizes", "4")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--device cuda: no CUDA device is available" in err


@pytest.mark.parametrize("error", [ValueError("internal shape bug"), ImportError("broken install")])
def test_errors_from_inside_keep_their_traceback(monkeypatch, capsys, error):
    """Only mistakes in what the user typed become one-line usage errors; a ValueError or
    ImportError raised while converting is a bug and must propagate."""
    import arma_plugin.convert

    def broken_armafy(*args, **kwargs):
        raise error

    monkeypatch.setattr(arma_plugin.convert, "armafy", broken_armafy)
    with pytest.raises(type(error), match=str(error)):
        main(["convert", "timm:test_resnet", "--out", "unused"])


def assert_one_line_usage_error(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_version(capsys):
    import arma_plugin

    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.strip() == f"arma-plugin {arma_plugin.__version__}"


@pytest.mark.parametrize("out, message", [
    ("/proc/no/such/dir", "cannot be written: creating anything in '/proc' fails"),
    ("{file}/sub", "is a file, so nothing can be created under it"),
    ("{file}", "is an existing file"),
])
def test_convert_refuses_an_unwritable_out_before_building(tmp_path, capsys, monkeypatch, out, message):
    import arma_plugin.cli

    file = tmp_path / "file"
    file.write_text("not a directory")
    monkeypatch.setattr(arma_plugin.cli, "build_model", lambda *a, **k: pytest.fail("model built before --out was checked"))
    code, _, err = run_main(capsys, "convert", "timm:test_resnet", "--out", out.format(file=file))
    assert_one_line_usage_error(code, err, message)


@pytest.mark.parametrize("argv, message", [
    (["inspect", "x", "--plot", "/proc/no/such/fig.png"], "--plot '/proc/no/such/fig.png' cannot be written"),
    (["erf", "--layers", "1", "--out", "/proc/no/such/fig.png"], "--out '/proc/no/such/fig.png' cannot be written"),
    (["erf", "--models", "timm:test_resnet", "--out", "/proc/no/such/fig.png"], "cannot be written"),
])
def test_figures_refuse_an_unwritable_path_before_any_work(capsys, monkeypatch, argv, message):
    import arma_plugin.cli

    monkeypatch.setattr(arma_plugin.cli, "build_model", lambda *a, **k: pytest.fail("model built before the path"))
    code, _, err = run_main(capsys, *argv)
    assert_one_line_usage_error(code, err, message)


@pytest.mark.parametrize("flags, message", [
    (["--target-modules", "nosuchconv"], "target_modules entries ['nosuchconv'] match no 2-D conv"),
    (["--config", '{"nonlocal_after": ["nope"]}'], "nonlocal_after names 'nope', which is not a module"),
    (["--config", '{"nonlocal_after": ["fc"]}'], "nonlocal_after module 'fc' must output one [B, C, H, W]"),
])
def test_config_that_does_not_fit_the_model_is_a_usage_error(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "convert", "timm:test_resnet", "--out", str(out), *flags)
    assert_one_line_usage_error(code, err, "the ARMA config does not fit timm:test_resnet: " + message)
    assert not out.exists()


def test_erf_input_size_the_model_cannot_take_is_a_usage_error(capsys):
    code, _, err = run_main(capsys, "erf", "--models", "timm:test_resnet", "--input-size", "1", "16", "16")
    assert_one_line_usage_error(code, err, "timm:test_resnet cannot run on --input-size 1 16 16 (C H W)")
    assert "to have 3 channels" in err


@pytest.mark.parametrize("spec", ["timm:test_resnet", "smp:Unet/resnet18"])
def test_pretrained_while_offline_is_one_line(tmp_path, capsys, monkeypatch, spec):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    code, _, err = run_main(capsys, "convert", spec, "--pretrained", "--out", str(tmp_path / "out"))
    assert_one_line_usage_error(code, err, f"--pretrained: cannot download the weights of {spec}")


@pytest.mark.parametrize("spec, message", [
    ("out/missing", "no checkpoint directory 'out/missing'"),  # its first part is a local folder
    ("./missing", "no checkpoint directory './missing'"),
    ("~/no-such-arma-checkpoint", "no checkpoint directory '~/no-such-arma-checkpoint'"),
    ("a/b/c", "no checkpoint directory 'a/b/c'"),
    ("bad name/x", "neither a checkpoint directory nor a Hub repo id"),
    ("resnet18", "a bare name is not a model (did you mean timm:resnet18?)"),
    ("Unet", "(did you mean smp:Unet/ENCODER, e.g. smp:Unet/resnet18?)"),
    ("no_such_thing", "'no_such_thing' is no checkpoint directory, and a bare name is not a model; a model is timm:"),
    ("tim:resnet18", "unknown model library 'tim' in 'tim:resnet18'"),
])
def test_local_paths_and_bare_names_never_reach_the_hub(tmp_path, capsys, monkeypatch, spec, message):
    import arma_plugin.hub

    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(arma_plugin.hub, "from_pretrained", lambda *a, **k: pytest.fail(f"{spec!r} sent to the Hub"))
    for argv in (["inspect", spec], ["convert", spec, "--out", "converted"]):
        code, _, err = run_main(capsys, *argv)
        assert_one_line_usage_error(code, err, message)


def test_convert_refuses_to_replace_a_checkpoint_without_overwrite(checkpoint, tmp_path, capsys):
    import shutil

    target = tmp_path / "target"
    shutil.copytree(checkpoint, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    code, _, err = run_main(capsys, "convert", "timm:test_resnet", "--out", str(target))
    assert_one_line_usage_error(code, err, "already holds a checkpoint (config.json, model.safetensors); "
                                           "pass --overwrite")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before

    code, out, err = run_main(capsys, "convert", "timm:test_resnet", "--out", str(target), "--overwrite",
                              "--ar-kernel-size", "3")
    assert code == 0, err
    assert "the checkpoint that was there is replaced" in out
    assert json.loads((target / "config.json").read_text())["arma_config"]["ar_kernel_size"] == 3


def test_a_checkpoint_folder_locked_by_another_save_is_one_line(tmp_path, capsys, monkeypatch):
    import arma_plugin.hub

    def locked(*args, **kwargs):
        raise TimeoutError(f"load: {tmp_path} stayed locked by another process saving or loading it")

    monkeypatch.setattr(arma_plugin.hub, "from_pretrained", locked)
    code, _, err = run_main(capsys, "inspect", str(tmp_path))
    assert_one_line_usage_error(code, err, "stayed locked by another process")


def test_a_disk_that_cannot_take_the_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    import arma_plugin.hub

    def disk_full(model, directory, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(arma_plugin.hub, "save_pretrained", disk_full)
    code, _, err = run_main(capsys, "convert", "timm:test_resnet", "--out", str(tmp_path / "out"))
    assert_one_line_usage_error(code, err, "the checkpoint could not be written: [Errno 28] No space left on device")


def test_erf_pretrained_applies_to_library_models_beside_checkpoints(checkpoint, capsys, monkeypatch):
    """The documented comparison: a pretrained base next to its armafied checkpoint."""
    import arma_plugin.cli

    calls = {}

    def record(spec, *, pretrained=False, **kwargs):
        calls[spec] = pretrained
        raise arma_plugin.cli.UsageError("stop after recording")

    monkeypatch.setattr(arma_plugin.cli, "build_model", record)
    for spec in ("timm:test_resnet", str(checkpoint)):
        run_main(capsys, "erf", "--models", spec, "--pretrained")
    assert calls == {"timm:test_resnet": True, str(checkpoint): False}
