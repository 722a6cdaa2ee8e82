"""Every command's help is plain text: no reStructuredText or Markdown markup, no type column on flags, lines within
80 columns."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from unlearn_audit.cli import app

COMMANDS = [[], ["check"], ["screen"], ["demo"], ["miniature"], ["diff"], ["quantizers"], ["attacks"], ["probes"], ["report"],
            ["card"], ["schema"], ["compare"], ["sweep"], ["spec"], ["spec", "init"], ["spec", "validate"], ["spec", "show"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "unlearn-audit")
def test_help_is_plain_text(command):
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Usage: " in text
    for markup in ("``", ":class:", ":func:", ":mod:", "[bold", "<bool>", "`"):
        assert markup not in text, (markup, text)
    assert not re.search(r"[╭╰│┃━]", text)  # no boxes
    assert max(len(line) for line in text.splitlines()) <= 80, text
