"""``appliance sounds build|list|say`` through click's CliRunner with real engines.

espeak-ng (Hungarian) renders most cases (≈1.5 s per full build); one test runs real Piper
with the joe English voice from PyPI (≈5 s).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner, Result

from appliance.cli.main import cli
from appliance.config import EXIT_CONFIG
from appliance.speech.library import DIGIT_CLIPS, NOTICE_CLIP, PromptLibrary, read_clip
from appliance.speech.tts import JOE_VOICE

RATE_HZ = 8000
#: A voice no machine has: forces the espeak-ng fallback deterministically.
MISSING_VOICE = "hu_HU-nobody-medium"

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not installed")


def run(state: Path, *args: str, config: Path | None = None) -> Result:
    prefix = ["--state-dir", str(state)]
    if config is not None:
        prefix = ["--config", str(config), *prefix]
    return CliRunner().invoke(cli, [*prefix, "sounds", *args], catch_exceptions=False)


def cache_of(state: Path) -> Path:
    return state / "prompt-cache"


@pytest.fixture(scope="module")
def built_hu(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """One espeak-ng Hungarian build, shared read-only; copy it before changing it."""
    state = tmp_path_factory.mktemp("built") / "state"
    result = run(state, "build", "--engine", "espeak", "--json")
    return state, result


@pytest.fixture
def state_hu(built_hu: tuple[Path, Result], tmp_path: Path) -> Path:
    """A private copy of the built state directory."""
    state = tmp_path / "state"
    shutil.copytree(built_hu[0], state)
    return state


def test_build_renders_every_clip_and_reports_it(built_hu: tuple[Path, Result]) -> None:
    state, result = built_hu
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["engine"] == "espeak-ng"
    assert summary["voice"] == "espeak-ng:hu"
    assert summary["lang"] == "hu"
    assert summary["warning"] is None
    names = [clip["name"] for clip in summary["clips"]]
    assert {NOTICE_CLIP, "notice_details", "notice_short", "reference_intro",
            *DIGIT_CLIPS} <= set(names)
    assert "last_call" not in names  # a template: filled and rendered at use, not cached
    assert {clip["status"] for clip in summary["clips"]} == {"rendered"}
    assert summary["rendered"] == len(names)
    assert summary["reused"] == 0
    # One progress line per clip on stderr, none on stdout (which is pure JSON).
    progress = [line for line in result.stderr.splitlines() if line.startswith("rendered")]
    assert len(progress) == len(names)
    assert any(line.split()[1] == NOTICE_CLIP for line in progress)
    # The reported lengths are the cached clips' lengths.
    library = PromptLibrary.load(cache_of(state), lang="hu")
    assert summary["notice_version"] == library.notice_version
    assert summary["notice_s"] == pytest.approx(library.notice.size / RATE_HZ, abs=1e-3)
    for clip in summary["clips"]:
        assert clip["seconds"] == pytest.approx(library.clip(clip["name"]).size / RATE_HZ,
                                                abs=1e-3)
    # The first layer of the notice, default configuration on espeak-ng: at most 10 s (what
    # every caller hears before a person; docs/speech.md). The second layer is the long one.
    assert 5.0 < summary["notice_s"] <= 10.0
    assert summary["notice_details_s"] > summary["notice_s"]
    assert summary["notice_short_s"] < summary["notice_s"]


def test_second_build_reuses_every_clip(state_hu: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in cache_of(state_hu).glob("*.wav")}
    result = run(state_hu, "build", "--engine", "espeak", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rendered"] == 0
    assert {clip["status"] for clip in summary["clips"]} == {"reused"}
    assert all(line.startswith("reused") for line in result.stderr.splitlines())
    after = {p.name: p.stat().st_mtime_ns for p in cache_of(state_hu).glob("*.wav")}
    assert after == before  # nothing was rewritten


def test_text_summary_and_fallback_warning(state_hu: Path) -> None:
    result = run(state_hu, "build", "--voice", MISSING_VOICE)
    assert result.exit_code == 0, result.output
    assert f"appliance: warning: Piper voice {MISSING_VOICE!r} is not installed" in result.stderr
    lines = dict(line.split(None, 1) if " " in line else (line, "")
                 for line in result.stdout.splitlines())
    assert lines["voice"].strip() == "espeak-ng:hu"
    assert lines["engine"].strip() == "espeak-ng"
    assert lines["WARNING"].startswith("fell back to espeak-ng")
    assert "notice length" in result.stdout
    # Same engine and settings as the fixture's build: everything reused.
    assert "(0 rendered," in result.stdout


def test_build_with_piper_joe_voice(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = run(state, "build", "--voice", JOE_VOICE, "--lang", "en", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["engine"] == "piper"
    assert summary["voice"] == f"piper:{JOE_VOICE}"
    assert summary["warning"] is None
    assert summary["rendered"] == len(summary["clips"])
    notice = read_clip(cache_of(state) / json.loads(
        PromptLibrary.manifest_path(cache_of(state), "en").read_text())["clips"][NOTICE_CLIP])
    assert notice is not None
    assert notice.size / RATE_HZ == pytest.approx(summary["notice_s"], abs=1e-3)
    assert np.abs(notice.astype(np.int32)).max() > 1000  # speech, not silence


def test_failed_render_leaves_previous_build_and_no_partial_file(
    state_hu: Path, tmp_path: Path
) -> None:
    manifest = PromptLibrary.manifest_path(cache_of(state_hu), "hu")
    manifest_before = manifest.read_bytes()
    files_before = sorted(p.name for p in cache_of(state_hu).iterdir())
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    broken.with_name("broken.onnx.json").write_text("{}")
    result = run(state_hu, "build", "--voice", str(broken))
    assert result.exit_code == 1
    assert "appliance: rendering failed: cannot load Piper voice" in result.stderr
    assert "previous build" in result.stderr
    assert manifest.read_bytes() == manifest_before
    assert sorted(p.name for p in cache_of(state_hu).iterdir()) == files_before
    # The daemon's path still loads the previous build.
    assert PromptLibrary.load(cache_of(state_hu), lang="hu").voice_id == "espeak-ng:hu"


def test_bad_notice_override_is_a_configuration_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[speech.texts]\nnotice = "Hello {nobody}"\n')
    result = run(tmp_path / "state", "build", "--engine", "espeak", config=config)
    assert result.exit_code == EXIT_CONFIG
    assert "configuration error" in result.stderr
    assert not cache_of(tmp_path / "state").exists() or not any(
        cache_of(tmp_path / "state").iterdir())


def test_list_shows_clips_with_durations(state_hu: Path) -> None:
    result = run(state_hu, "list", "--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert listing["voice"] == "espeak-ng:hu"
    assert listing["stale_notice"] is False
    library = PromptLibrary.load(cache_of(state_hu), lang="hu")
    by_name = {clip["name"]: clip["seconds"] for clip in listing["clips"]}
    assert by_name[NOTICE_CLIP] == pytest.approx(library.notice.size / RATE_HZ, abs=1e-3)
    text = run(state_hu, "list")
    assert text.exit_code == 0
    assert any(line.split()[0] == NOTICE_CLIP for line in text.stdout.splitlines()[1:])
    assert "(notice, first layer: every caller, before recording)" in text.stdout
    assert "(notice, second layer: on the details key)" in text.stdout


def test_list_flags_corrupt_clip_and_stale_notice(state_hu: Path, tmp_path: Path) -> None:
    manifest = json.loads(PromptLibrary.manifest_path(cache_of(state_hu), "hu").read_text())
    clip_file = cache_of(state_hu) / manifest["clips"]["goodbye"]
    clip_file.write_bytes(clip_file.read_bytes()[:100])  # truncated by a power cut
    config = tmp_path / "config.toml"
    config.write_text('[device]\ncompany = "Másik Bolt"\n')
    result = run(state_hu, "list", config=config)
    assert result.exit_code == 1
    assert "MISSING/CORRUPT" in result.stdout
    assert "missing or corrupt clips: goodbye" in result.stderr
    assert "the configured notice differs" in result.stderr


def test_list_without_build(tmp_path: Path) -> None:
    result = run(tmp_path / "state", "list")
    assert result.exit_code == 1
    assert "no prompts built for 'hu'" in result.stderr


def test_say_writes_the_cached_clip(state_hu: Path, tmp_path: Path) -> None:
    out = tmp_path / "notice.wav"
    result = run(state_hu, "say", NOTICE_CLIP, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    audio, rate = soundfile.read(out, dtype="int16")
    assert rate == RATE_HZ
    assert soundfile.info(out).subtype == "PCM_16"
    np.testing.assert_array_equal(audio, PromptLibrary.load(cache_of(state_hu), lang="hu").notice)


def test_say_assembles_a_reference(state_hu: Path, tmp_path: Path) -> None:
    out = tmp_path / "ref.wav"
    result = run(state_hu, "say", "427-193-53", "--out", str(out))
    assert result.exit_code == 0, result.output
    audio, _ = soundfile.read(out, dtype="int16")
    expected = PromptLibrary.load(cache_of(state_hu), lang="hu").reference_audio("42719353")
    np.testing.assert_array_equal(audio, expected)


def test_say_replaces_a_regular_file_only_with_force(state_hu: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine.wav"
    out.write_bytes(b"the technician's own recording")
    refused = run(state_hu, "say", NOTICE_CLIP, "--out", str(out))
    assert refused.exit_code == 1
    assert "--force" in refused.stderr
    assert out.read_bytes() == b"the technician's own recording"
    forced = run(state_hu, "say", NOTICE_CLIP, "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert soundfile.info(out).samplerate == RATE_HZ


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_say_never_replaces_what_is_not_a_regular_file(state_hu: Path, tmp_path: Path,
                                                        kind: str) -> None:
    # /dev/full was once replaced by a WAV; a FIFO is a node any user can make.
    out = tmp_path / "node"
    target = tmp_path / "target.wav"
    target.write_bytes(b"kept")
    {"fifo": lambda: os.mkfifo(out), "symlink": lambda: out.symlink_to(target),
     "directory": out.mkdir}[kind]()
    before = out.lstat()
    result = run(state_hu, "say", NOTICE_CLIP, "--out", str(out), "--force")
    if kind == "directory":
        assert result.exit_code == 2  # click's dir_okay=False: a usage error
    else:
        assert result.exit_code == 1
        assert "not replaced" in result.stderr
    after = out.lstat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert target.read_bytes() == b"kept"


def test_say_unknown_name_and_no_build(state_hu: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.wav"
    unknown = run(state_hu, "say", "nope", "--out", str(out))
    assert unknown.exit_code == 1
    assert "no clip 'nope'" in unknown.stderr
    assert NOTICE_CLIP in unknown.stderr  # lists what exists
    nothing = run(tmp_path / "empty", "say", NOTICE_CLIP, "--out", str(out))
    assert nothing.exit_code == 1
    assert "appliance sounds build" in nothing.stderr
    assert not out.exists()
