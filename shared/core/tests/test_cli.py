"""`one_line_errors` turns input errors into one line and an exit status; other errors still raise."""

import pytest

from difflab_core.cli import one_line_errors, status
from difflab_core.errors import DifflabError


def test_input_errors_become_one_line_and_the_exit_code(capsys):
    @one_line_errors(exit_code=2)
    def command(kind: str):
        if kind == "difflab":
            raise DifflabError("data/x.json: not valid JSON\n  (line 3)")
        if kind == "missing":
            raise FileNotFoundError("no such folder: data/")
        return "ok"

    assert command("fine") == "ok"
    for kind, message in (
        ("difflab", "data/x.json: not valid JSON (line 3)"),
        ("missing", "no such folder: data/"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            command(kind)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"error: {message}\n"


def test_bugs_still_raise_and_ctrl_c_is_reported_only_when_asked(capsys):
    @one_line_errors()
    def buggy():
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        buggy()

    @one_line_errors(interrupted="finished rows are saved; rerun to continue")
    def stopped():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        stopped()
    assert exit_info.value.code == 130
    assert "rerun to continue" in capsys.readouterr().err
    with status("working", enabled=False):
        pass
