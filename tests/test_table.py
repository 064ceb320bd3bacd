"""format_table: the one formatter behind every printed table (CLI, benchmarks, sweeps, report)."""
import pytest

from arma_plugin.table import format_table


def test_markdown_columns_are_padded_to_the_widest_cell() -> None:
    text = format_table(["model", "ms"], [("vgg11", 1.5), ("resnet18", 12.25)])
    assert text.splitlines() == [
        "| model    | ms    |",
        "|----------|-------|",
        "| vgg11    | 1.5   |",
        "| resnet18 | 12.25 |",
    ]


def test_plain_text_has_no_pipes_and_no_trailing_spaces() -> None:
    text = format_table(("name", "calls"), [("stem", 1), ("layer1.0.conv1", 12)], markdown=False)
    assert text.splitlines() == ["name            calls", "stem            1", "layer1.0.conv1  12"]


@pytest.mark.parametrize("value,float_format,cell", [
    (0.000123456, ".4g", "0.0001235"),
    (2.0, ".1f", "2.0"),
    (None, ".4g", "-"),
    (7, ".1f", "7"),              # ints are not floats: no float_format
    (True, ".4g", "True"),
    ("1.23456", ".2f", "1.23456"),  # preformatted strings stay as given
])
def test_cell_formatting(value, float_format: str, cell: str) -> None:
    text = format_table(["x"], [(value,)], float_format=float_format, markdown=False)
    assert text.splitlines()[1] == cell


def test_empty_table_is_the_header() -> None:
    assert format_table(["a", "bb"], []).splitlines() == ["| a | bb |", "|---|----|"]


@pytest.mark.parametrize("rows", [[(1,)], [(1, 2, 3)], [(1, 2), (1,)]])
def test_rows_must_match_the_header(rows) -> None:
    with pytest.raises(ValueError, match="every row must have 2 cells"):
        format_table(["a", "b"], rows)
