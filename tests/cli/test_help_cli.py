"""``--help`` (issue 16): every flag with a default of its own shows it, flags that default
to the run's config name that default, required flags say so, ``--head`` lists the heads,
and ``-v`` is accepted after the command too."""

from __future__ import annotations

import argparse

import pytest

from gigastream.cli.main import build_parser, main
from gigastream.mil.heads import list_mil_heads


def _leaves(parser: argparse.ArgumentParser, path=()):
    """``(command path, parser)`` of every command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from _leaves(child, (*path, name))


def test_every_flag_with_a_default_shows_it_and_required_flags_say_so():
    leaves = list(_leaves(build_parser()))
    assert len(leaves) >= 12
    for path, parser in leaves:
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or action.help is argparse.SUPPRESS:
                continue
            flag = action.option_strings[-1]
            default = action.default
            if default not in (None, False, argparse.SUPPRESS) and not isinstance(default, list):
                assert "default" in (action.help or "") or f"(default: {default})" in text, (
                    f"gigastream {' '.join(path)} {flag}: default {default!r} not shown"
                )
            if action.required:
                assert "(required)" in parser._get_formatter()._get_help_string(action)


def test_train_help_names_the_run_defaults_and_the_heads(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "passes over the training slides (default: 24)" in text
    assert "CNN trunk (default: vgg_small)" in text
    assert "--head {" + ",".join(list_mil_heads()) + "}" in text
    assert "run folder" in text and "(required)" in text


def test_verbose_is_accepted_after_the_command(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,path,label\n")
    code = main(["splits", "--manifest", str(manifest), "--out", str(tmp_path / "s.csv"), "-v"])
    assert code == 1  # parsed: the (empty) manifest is refused by the command, not by argparse
    assert "unrecognized arguments" not in capsys.readouterr().err
