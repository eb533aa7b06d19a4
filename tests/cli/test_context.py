"""The options and exit codes every ``appliance`` subcommand shares."""

from __future__ import annotations

import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from appliance.cli.context import EXIT_NOT_RUNNING
from appliance.cli.main import cli
from appliance.config import EXIT_CONFIG, load_config


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.extend(_leaf_commands(command, (*prefix, name)))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", _leaf_commands(cli), ids=" ".join)
def test_every_subcommand_takes_state_dir_and_config(path: tuple[str, ...]) -> None:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    opts = {opt for param in command.params for opt in getattr(param, "opts", ())}
    assert {"--state-dir", "--config"} <= opts


def test_state_dir_after_the_subcommand_is_the_same_as_before(tmp_path: Path) -> None:
    before = CliRunner().invoke(cli, ["--state-dir", str(tmp_path), "config", "show"])
    after = CliRunner().invoke(cli, ["config", "show", "--state-dir", str(tmp_path)])
    assert before.exit_code == after.exit_code == 0, after.output
    assert f'state_dir = "{tmp_path}"' in after.output
    assert before.output == after.output


def test_config_after_the_subcommand_is_read(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text("[call]\nagent_timeout_s = -1\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["calls", "--state-dir", str(tmp_path), "--config",
                                      str(bad)])
    assert result.exit_code == EXIT_CONFIG
    assert "call.agent_timeout_s" in result.output


def test_a_value_after_the_subcommand_wins(tmp_path: Path) -> None:
    other = tmp_path / "other"
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path), "config", "show",
                                      "--state-dir", str(other)])
    assert result.exit_code == 0, result.output
    assert f'state_dir = "{other}"' in result.output


def test_help_lists_every_exit_code() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for code in (0, 1, 2, EXIT_NOT_RUNNING, EXIT_CONFIG):
        assert f"{code} " in text
    assert "daemon not running" in text
    assert "configuration error" in text


def test_config_show_is_toml_that_loads_back_to_the_same_config(tmp_path: Path) -> None:
    source = tmp_path / "config.toml"
    source.write_text("[device]\ncompany = 'Kovács \"Vas\" Kft.'\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(source), "--state-dir", str(tmp_path),
                                      "config", "show"])
    assert result.exit_code == 0, result.output
    shown = tmp_path / "shown.toml"
    shown.write_text(result.output, encoding="utf-8")
    tomllib.loads(result.output)  # valid TOML, quotes escaped
    assert load_config(shown, state_dir=tmp_path) == load_config(source, state_dir=tmp_path)
