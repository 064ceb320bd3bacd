"""Smoke test of the layer benchmark CLI (numbers are not asserted: it is a benchmark)."""
import json

import pytest

from arma_plugin.benchmark import main


def test_json_rows_cover_the_grid(capsys):
    assert main(["--sizes", "8", "--q", "1", "2", "--boundaries", "circular", "zeros", "--batch", "1",
                 "--channels", "2", "--repeats", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["size"], r["Q"], r["boundary"]) for r in rows} == \
        {(8, q, b) for q in (1, 2) for b in ("circular", "zeros")}
    for r in rows:
        out_numel, alpha_numel = r["batch"] * r["channels"] * r["size"] ** 2, r["channels"] * r["Q"] * 4
        # one output-sized tensor, plus the few alpha-sized tensors tanh/rotation save (≤ 10)
        assert r["ar_torch_saved_outputs"] * out_numel <= out_numel + 10 * alpha_numel
        assert ("released_ms" in r) == (r["boundary"] == "circular")


def test_table_output(capsys):
    assert main(["--sizes", "4", "--q", "1", "--batch", "1", "--channels", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| H=W |" in out and "circular" in out and "zeros" in out


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "0"], "argument --sizes: must be an integer >= 1, got '0'"),
    (["--q", "1.5"], "argument --q: must be an integer >= 1, got '1.5'"),
    (["--threads", "-1"], "argument --threads: must be an integer >= 1, got '-1'"),
    (["--repeats", "0"], "argument --repeats: must be an integer >= 1, got '0'"),
])
def test_bad_arguments_are_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip() == f"arma-plugin bench: error: {message} (see arma-plugin bench --help)"


def test_benchmark_does_not_import_the_command_line():
    """``arma-plugin bench`` runs this module, so it must sit below ``cli`` (no import cycle)."""
    import ast
    from pathlib import Path

    import arma_plugin.benchmark

    tree = ast.parse(Path(arma_plugin.benchmark.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not imported & {"cli", "arma_plugin.cli"}


def test_sizes_beyond_the_machine_memory_are_refused_before_allocating(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--sizes", "8", "1000000", "--batch", "1", "--channels", "1"])  # 6 maps of 10^6 x 10^6 fp32: 22 TiB
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--sizes 1000000: about 22351.7 GiB of fp32 maps, more than the" in err
