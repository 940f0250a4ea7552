"""python -m sandbox: --help answers with the commands and exit 0; an unknown command is one line, exit 2."""

from __future__ import annotations

import pytest

from cli import UsageError
from sandbox.__main__ import main


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_the_commands(capsys, flag):
    assert main([flag]) == 0
    out = capsys.readouterr().out
    assert "python -m sandbox run" in out and "humaneval --samples" in out


@pytest.mark.parametrize("argv", [[], ["bogus"]])
def test_an_unknown_command_is_a_usage_error(argv):
    with pytest.raises(UsageError, match="usage: python -m sandbox"):
        main(argv)
