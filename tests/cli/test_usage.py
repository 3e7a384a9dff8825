"""A mistyped command line gets click's usage message and exit code 2, and an error its one
line as written; never a traceback."""

import pytest

from kiln.cli import main


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["trian", "jobs/digits-cnn.yaml"], "No such command 'trian'. Did you mean 'train'?"),
        (["train"], "Missing argument 'spec_file'"),
        (["train", "jobs/digits-cnn.yaml", "--epochs", "3"], "No such option: --epochs"),
        (["bench", "http://127.0.0.1:8000/v2/models/m", "-c", "many"], "Invalid value for '-c'"),
        (["models", "show"], "Missing argument 'ref'"),
    ],
)
def test_a_usage_error_is_one_message_and_exit_2(argv, says, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert says in err and "Usage: kiln" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("group", ["models", "serve", "rollout", "features", "jobs", "k8s"])
def test_a_command_group_without_its_command_shows_its_help(group, capsys):
    with pytest.raises(SystemExit):
        main([group])
    out = capsys.readouterr()
    assert f"Usage: kiln {group}" in out.out + out.err
    assert "Traceback" not in out.out + out.err


def test_help_wraps_a_docstring_to_the_terminal_not_at_its_line_breaks(capsys, monkeypatch):
    """A summary written over two source lines reads as one sentence in the command list."""
    monkeypatch.setenv("COLUMNS", "200")
    main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "(adding or updating only its own), wait until it is healthy" in out


def test_an_error_is_printed_as_it_reads_whatever_brackets_it_holds(capsys):
    """Error text is not markup: a path or a server's message such as HAProxy's
    '[/tmp/haproxy-serve/.../haproxy.cfg:55]' raised rich's MarkupError, a traceback."""
    with pytest.raises(SystemExit) as exited:
        main(["train", "nowhere/[/etc]/[bold]job.yaml"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "file not found: nowhere/[/etc]/[bold]job.yaml" in err
    assert "Traceback" not in err
