"""Configuration: defaults load, overrides apply, every bad input names its key."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from appliance.cli.main import cli
from appliance.config import (
    EXIT_CONFIG,
    LINE_DEFAULTS,
    RANGES,
    Config,
    LineConfig,
    load_config,
    packaged_defaults,
)
from appliance.errors import ConfigError
from appliance.line.commands import DEFAULT_FORMAT_PREFERENCE


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_hungarian_one_line_sim(tmp_path: Path) -> None:
    config = load_config(Path("/dev/null"), state_dir=tmp_path)
    assert config.device.language == "hu"
    assert config.device.state_dir == tmp_path
    assert [line.name for line in config.lines] == ["main"]
    assert config.lines[0].country_code == "51"
    assert config.db_path == tmp_path / "appliance.db"
    assert config.handset.ring_on_s == 1.25
    assert config.handset.ring_off_s == 3.75


def test_file_overrides_defaults_and_lines_replace_whole(tmp_path: Path) -> None:
    path = write(tmp_path, """
[device]
company = "Kovács Vas"
[[lines]]
name = "front"
device = "/dev/ttyACM0"
country_code = "51"
[[lines]]
name = "back"
device = "/dev/ttyACM1"
country_code = "51"
""")
    config = load_config(path, state_dir=tmp_path)
    assert config.device.company == "Kovács Vas"
    assert config.device.language == "hu"  # untouched default survives
    assert [line.name for line in config.lines] == ["front", "back"]


@pytest.mark.parametrize(
    ("text", "key", "found"),
    [
        ("[device]\ncompnay = 'x'\n", "device.compnay", "compnay"),
        ("[call]\nanswer_after_rings = 'two'\n", "call.answer_after_rings", "two"),
        ("[call]\nanswer_after_rings = 0\n", "call.answer_after_rings", 0),
        ("[call]\noptout_key = 'x'\n", "call.optout_key", "x"),
        ("[recording]\ncodec = 'mp3'\n", "recording.codec", "mp3"),
        ("[handset]\nring_on_s = 3.0\n", "handset.ring_on_s", 3.0),
        ("[handset]\nring_hz = 50\n", "handset.ring_hz", 50.0),
        ("[[lines]]\nname = 'a'\ndevice = 'sim://'\n", "lines[0].country_code", None),
        ("[[lines]]\nname = 'a'\ndevice = 'sim://'\ncountry_code = '51'\nspeed = 1\n",
         "lines[0].speed", "speed"),
        ("[speech]\ntexts = { notice = 5 }\n", "speech.texts", {"notice": 5}),
        ("[gpio]\npin_factory = true\n", "gpio.pin_factory", True),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str, found: object) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), state_dir=tmp_path)
    assert info.value.key == key
    assert info.value.found == found
    assert key in str(info.value)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[device\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, state_dir=tmp_path)
    assert str(path) in str(info.value)


def test_cli_exits_78_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[call]\nagent_timeout_s = -1\n")
    result = CliRunner().invoke(cli, ["--config", str(path), "--state-dir", str(tmp_path),
                                      "config", "show"])
    assert result.exit_code == EXIT_CONFIG
    assert "call.agent_timeout_s" in result.output


def test_config_show_prints_effective_values(tmp_path: Path) -> None:
    path = write(tmp_path, "[device]\ncompany = 'Kovács Vas'\n")
    result = CliRunner().invoke(cli, ["--config", str(path), "--state-dir", str(tmp_path),
                                      "config", "show"])
    assert result.exit_code == 0, result.output
    assert 'company = "Kovács Vas"' in result.output
    assert "[[lines]]" in result.output
    assert f'state_dir = "{tmp_path}"' in result.output


def test_a_pin_used_twice_names_both_uses(tmp_path: Path) -> None:
    path = write(tmp_path, "[panel]\nfault_pin = 23\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, state_dir=tmp_path)
    assert info.value.key == "panel.fault_pin"
    assert "handset.rm_pin" in str(info.value)


def test_uart_pins_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[panel]\nbutton_pin = 14\n")
    with pytest.raises(ConfigError, match="UART"):
        load_config(path, state_dir=tmp_path)


# --- every numeric key has a range, and a number outside it is exit 78 --------------------------


def _numeric_keys() -> dict[str, type]:
    """Every int/float key of the schema, ``lines[].key`` for the per-line ones."""
    keys: dict[str, type] = {}
    for section, hint in typing.get_type_hints(Config).items():
        if typing.get_origin(hint) is tuple:
            hint, prefix = typing.get_args(hint)[0], f"{section}[]"
        else:
            prefix = section
        for name, tp in typing.get_type_hints(hint).items():
            if tp in (int, float):
                keys[f"{prefix}.{name}"] = tp
    return keys


def _toml_for(key: str, literal: str) -> str:
    section, name = key.split(".")
    if section == "lines[]":
        return (f"[[lines]]\nname = 'main'\ndevice = 'sim://'\ncountry_code = '51'\n"
                f"{name} = {literal}\n")
    return f"[{section}]\n{name} = {literal}\n"


def test_every_numeric_key_has_a_range() -> None:
    assert set(_numeric_keys()) == set(RANGES)


@pytest.mark.parametrize("key", sorted(RANGES))
@pytest.mark.parametrize("literal", ["-1", "-10", "-1.25", "1e12", "9223372036854775807",
                                     "nan", "inf", "-inf"])
def test_numbers_out_of_range_name_their_key(tmp_path: Path, key: str, literal: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, _toml_for(key, literal)), state_dir=tmp_path)
    assert info.value.key == key.replace("lines[]", "lines[0]")


@pytest.mark.parametrize("key", sorted(RANGES))
def test_zero_is_in_range_or_refused_by_name(tmp_path: Path, key: str) -> None:
    literal = "0" if _numeric_keys()[key] is int else "0.0"
    path = write(tmp_path, _toml_for(key, literal))
    if RANGES[key].allows(0):
        load_config(path, state_dir=tmp_path)
    else:
        with pytest.raises(ConfigError) as info:
            load_config(path, state_dir=tmp_path)
        assert info.value.key == key.replace("lines[]", "lines[0]")


@pytest.mark.parametrize(("text", "key"), [
    ("[handset]\nring_off_s = -10\n", "handset.ring_off_s"),   # was accepted: calls missed
    ("[handset]\nring_off_s = -1.25\n", "handset.ring_off_s"),  # was a ZeroDivisionError
    ("[panel]\nlong_press_s = -1.0\n", "panel.long_press_s"),  # was a gpiozero traceback
])
def test_run_exits_78_on_a_bad_number(tmp_path: Path, text: str, key: str) -> None:
    result = CliRunner().invoke(cli, ["--config", str(write(tmp_path, text)),
                                      "--state-dir", str(tmp_path), "run"])
    assert result.exit_code == EXIT_CONFIG, result.output
    assert key in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_file_that_is_not_utf8_is_exit_78(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes("[device]\ncompany = 'Kovács'\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path, state_dir=tmp_path)
    assert str(path) in str(info.value)
    assert "UTF-8" in str(info.value)
    result = CliRunner().invoke(cli, ["--config", str(path), "--state-dir", str(tmp_path), "run"])
    assert result.exit_code == EXIT_CONFIG
    assert "UTF-8" in result.output


def test_the_ranges_are_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs/configuration.md").read_text(
        encoding="utf-8")
    for key, allowed in RANGES.items():
        assert f"| `{key}` | {allowed.describe()} |" in doc, key


def test_every_config_field_says_what_it_is() -> None:
    # Each field of each [section] dataclass carries its one-line doc (a `#:` comment above
    # it or a string below it), so the code explains a key where it is read.
    import ast

    import appliance.config as config_module

    source = Path(config_module.__file__).read_text(encoding="utf-8")
    lines = source.splitlines()
    undocumented = []
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.ClassDef) and node.name.endswith("Config")
                and node.name != "Config"):
            continue
        for i, field in enumerate(node.body):
            if not isinstance(field, ast.AnnAssign) or not isinstance(field.target, ast.Name):
                continue
            above = lines[field.lineno - 2].strip()
            below = node.body[i + 1] if i + 1 < len(node.body) else None
            doc_below = (isinstance(below, ast.Expr) and isinstance(below.value, ast.Constant)
                         and isinstance(below.value.value, str))
            if not above.startswith("#:") and not doc_below:
                undocumented.append(f"{node.name}.{field.target.id}")
    assert undocumented == []


def test_line_audio_formats_default_to_the_best_first_and_are_checked(tmp_path: Path) -> None:
    line = {"name": "main", "device": "sim://", "country_code": "51"}
    config = load_config(Path("/dev/null"), state_dir=tmp_path, overrides={"lines": [line]})
    assert config.lines[0].audio_formats == ("s16le", "alaw", "ulaw", "u8", "s8")
    config = load_config(Path("/dev/null"), state_dir=tmp_path, overrides={
        "lines": [{**line, "audio_formats": ["alaw", "u8"]}]})
    assert config.lines[0].audio_formats == ("alaw", "u8")
    for bad, message in ((["alaw", "gsm"], "distinct formats"), (["u8", "u8"], "distinct"),
                         ([], "non-empty list"), ("alaw", "list of strings")):
        with pytest.raises(ConfigError, match=r"lines\[0\]\.audio_formats") as exc:
            load_config(Path("/dev/null"), state_dir=tmp_path, overrides={
                "lines": [{**line, "audio_formats": bad}]})
        assert message in str(exc.value)


def _schema_fields(tp: type, prefix: str) -> list[tuple[str, dataclasses.Field[Any]]]:
    """Every field of ``tp`` and of the config dataclasses under it, by dotted key."""
    out = []
    hints = typing.get_type_hints(tp)
    for f in dataclasses.fields(tp):  # type: ignore[arg-type]
        key = f"{prefix}.{f.name}" if prefix else f.name
        out.append((key, f))
        hint = hints[f.name]
        if typing.get_origin(hint) is tuple and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            out += _schema_fields(typing.get_args(hint)[0], f"{key}[]")
        elif dataclasses.is_dataclass(hint):
            out += _schema_fields(hint, key)
    return out


def test_defaults_toml_is_the_one_source_of_every_default() -> None:
    # No config dataclass has a default of its own: one would be a second definition that
    # could drift from appliance/defaults.toml, which config show and the docs describe.
    with_default = [key for key, f in _schema_fields(Config, "")
                    if f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING]
    assert with_default == []
    # And every key has its value there: a section key in its table, a per-line key in the
    # default [[lines]] table or in [line_defaults] (name, device, country_code each line gives).
    defaults = packaged_defaults()
    line_keys = set(defaults["lines"][0]) | set(defaults[LINE_DEFAULTS])
    missing = []
    for key, _f in _schema_fields(Config, ""):
        section, _, name = key.partition(".")
        if not name:
            present = section in defaults
        elif section == "lines[]":
            present = name in line_keys
        else:
            present = name in defaults.get(section, {})
        if not present:
            missing.append(key)
    assert missing == []
    line_fields = {f.name for f in dataclasses.fields(LineConfig)}
    assert set(defaults[LINE_DEFAULTS]) < line_fields  # no unknown key hides in the table
    assert set(defaults[LINE_DEFAULTS]).isdisjoint({"name", "device", "country_code"})


def test_line_defaults_fill_every_line_and_a_line_overrides_them(tmp_path: Path) -> None:
    path = write(tmp_path, """
[[lines]]
name = "front"
device = "sim://"
country_code = "51"
[[lines]]
name = "back"
device = "sim://"
country_code = "51"
tx_lead_ms = 60
language = "en"
""")
    front, back = load_config(path, state_dir=tmp_path).lines
    line_defaults = packaged_defaults()[LINE_DEFAULTS]
    assert (front.tx_lead_ms, front.language) == (line_defaults["tx_lead_ms"], "")
    assert (back.tx_lead_ms, back.language) == (60, "en")
    assert back.liveness_interval_s == line_defaults["liveness_interval_s"]
    # The table is the packaged defaults' own: a user's file sets the key per line.
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[line_defaults]\ntx_lead_ms = 40\n"), state_dir=tmp_path)
    assert info.value.key == "line_defaults"


def test_the_default_format_order_is_the_drivers(tmp_path: Path) -> None:
    # The line layer keeps its own order for tools that run without a configuration
    # (modem probe, the bench); the configured default must be that same order.
    assert (load_config(Path("/dev/null"), state_dir=tmp_path).lines[0].audio_formats
            == DEFAULT_FORMAT_PREFERENCE)
