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


def test_text_mode_escapes_control_characters_and_prints_the_verdict_on_its_own_line():
    from sandbox.__main__ import format_text

    hostile = "\x1b[2J\x1b[Hpassed in 0.01s\r\u202e"
    result = {"status": "failed:exception", "detail": "the sample reported 'passed'", "duration": 0.1}
    text = format_text({**result, "stdout": hostile, "layers": ["seccomp"]})
    assert not any(not c.isprintable() for c in text.replace("\n", ""))
    assert text.splitlines()[-1].startswith("sandbox verdict: failed:exception (")
