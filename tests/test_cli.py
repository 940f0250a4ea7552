"""cli.build_parser: a config's fields become flags; inherited option groups get their own --help section."""

from dataclasses import dataclass

from cli import build_parser, opt, parse_config


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
