"""cli.build_parser: a config's fields become flags; inherited option groups get their own --help section."""

import re
from dataclasses import dataclass

import pytest

from cli import UsageError, build_parser, opt, parse_config


@dataclass
class Undocumented:
    depth: int = opt(2, "layers")


@dataclass
class Width:
    """How wide the model is."""

    width: int = opt(4, "channels")


@dataclass
class Config(Width, Undocumented):
    name: str = opt("x", "what to call it")


def test_an_option_group_with_a_docstring_gets_a_help_section_after_the_configs_own_flags():
    text = build_parser(Config).format_help()
    section = text.index("How wide the model is:")
    assert text.index("--name NAME ") < section < text.index("--width WIDTH ")
    assert text.index("--depth DEPTH ") < section  # a group without a docstring stays with the own flags
    usage = text[: text.index("\n\n")]
    assert usage.index("--name") < usage.index("--width")  # the usage line lists them in the same order


def test_sections_change_the_help_not_what_is_parsed():
    assert parse_config(Config, []) == Config()
    argv = ["--width", "8", "--depth", "3", "--name", "y"]
    assert parse_config(Config, argv) == Config(width=8, depth=3, name="y")


def test_a_mistyped_flag_gets_a_suggestion_and_exit_code_2(capsys):
    from training.config import TrainConfig

    with pytest.raises(SystemExit) as e:
        parse_config(TrainConfig, ["--lora-rnk", "8"])
    assert e.value.code == 2
    assert "unrecognized arguments: --lora-rnk 8 (did you mean --lora-rank?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--zzzzzz"])
    assert "did you mean" not in capsys.readouterr().err  # nothing close: no guess


def test_help_prints_each_default_once():
    from training.config import TrainConfig

    parser = build_parser(TrainConfig)
    text = " ".join(parser.format_help().split())
    helps = [
        parser.formatter_class("x")._get_help_string(a).replace("%(default)s", "D") for a in parser._actions
    ]
    assert all(h.count("(default") <= 1 for h in helps), [h for h in helps if h.count("(default") > 1]
    assert "(default: None)" not in text
    assert "examples per micro-batch per process (default: 8)" in text
    assert "peak learning rate (default 2e-4 with LoRA, 5e-5 full) --" in text  # its own words, once


def test_a_yaml_config_sets_defaults_flags_override_and_its_keys_count_as_given(tmp_path):
    """Settings from --config are what a resumed run treats as given, as if typed on the command line."""
    from cli import given_flags
    from training.config import TrainConfig

    path = tmp_path / "run.yaml"
    path.write_text("# a recipe\nmodel: tiny\nlora-rank: 4\nmax_steps: 7\n")
    cfg = parse_config(TrainConfig, ["--config", str(path), "--max-steps", "9"])
    assert (cfg.model, cfg.lora_rank, cfg.max_steps) == ("tiny", 4, 9)
    assert given_flags(TrainConfig, ["--config", str(path), "--lr", "0.1"]) == {
        "config", "model", "lora_rank", "max_steps", "lr"
    }  # fmt: skip


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: [tiny\n", "is not valid YAML"),
        ("- model\n- tiny\n", "must hold one mapping of option: value, not a list"),
        ("epochs: 2\nbatchsize: 4\n", "has unknown key: batchsize (did you mean batch_size?)"),
    ],
)
def test_a_bad_yaml_config_is_one_usage_error(tmp_path, text, message):
    from training.config import TrainConfig

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_config(TrainConfig, ["--config", str(path)])
