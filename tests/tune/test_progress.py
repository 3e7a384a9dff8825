"""The search's live table as a log or a pipe receives it."""

from kiln.tune.progress import SearchView
from kiln.validate import load_spec
from tests.conftest import ROOT


def test_the_final_table_ends_its_line_when_output_is_not_a_terminal(capsys):
    """rich ends a live display's last frame with a newline only on a terminal: in a log,
    `kiln tune`'s "best trial ..." line followed the table's last border on the same line."""
    spec = load_spec(ROOT / "jobs/digits-cnn-tune.yaml")
    assert spec.tune is not None
    view = SearchView("search", spec.tune)
    view.setup()
    view.on_experiment_end(trials=[])
    printed = capsys.readouterr().out
    assert "search search" in printed and printed.endswith("\n")
