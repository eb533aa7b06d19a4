"""The ``appliance sounds`` commands: render, list and listen to the prompt clips.

* ``appliance sounds build`` renders every prompt, the notice and the digit words into the
  prompt cache (``<state_dir>/prompt-cache``) with the configured voice — the same call the
  daemon makes at start (:meth:`PromptLibrary.build`), so a technician can render ahead of
  time, see what was rendered or reused, and hear the result before the first call.
* ``appliance sounds list`` shows the clips of the last build with their durations.
* ``appliance sounds say NAME --out FILE.wav`` writes one clip (or a call reference assembled
  from the digit clips) to a WAV file for listening.

Registered on the main group by :func:`register`. Exit codes as in :mod:`appliance.cli.context`:
0 ok, 1 rendering failed / nothing built / no such clip, 2 usage, 78 configuration error.
Progress goes to stderr, results to stdout, so ``--json`` output can be piped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

import click

from appliance.cli.context import CliContext, check_output_path, fail
from appliance.config import LANGUAGES
from appliance.languages.registry import for_config

if TYPE_CHECKING:
    from appliance.config import Config
    from appliance.speech.tts import TtsEngine

ENGINE_PIPER: Final[str] = "piper"
ENGINE_ESPEAK: Final[str] = "espeak"
#: What `sounds list` says after each notice layer (docs/speech.md "The layered notice").
_LAYER_LABELS: Final[dict[str, str]] = {
    "notice": "notice, first layer: every caller, before recording",
    "notice_details": "notice, second layer: on the details key",
    "notice_short": "notice, returning caller's short form",
}


def _config_error(exc: Exception) -> NoReturn:
    from appliance.config import EXIT_CONFIG

    fail(f"configuration error: {exc}", EXIT_CONFIG)


def _language(config: Config, lang: str | None) -> str:
    """``--lang`` (default ``device.language``), checked against the configuration's languages
    (built-in plus ``speech.languages_dir``); an unknown one exits 78."""
    from appliance.errors import ConfigError

    chosen = lang or config.device.language
    try:
        return for_config(config).get(chosen, key="--lang").code
    except ConfigError as exc:
        _config_error(exc)


def _texts_and_notice(config: Config, lang: str) -> tuple[dict[str, str], dict[str, str]]:
    """Prompt templates and the filled notice layers for ``lang``, as the daemon computes them.

    The configured text overrides (``speech.texts``) are written in the configured language,
    so they apply only when ``lang`` is that language; company and purpose are used as given.

    Raises:
        ConfigError: an override or a notice value cannot be used.
    """
    from appliance.speech.prompts import load_prompt_texts, notice_texts_for

    overrides = config.speech.texts if lang == config.device.language else None
    texts = load_prompt_texts(lang, overrides, for_config(config))
    return texts, notice_texts_for(config, texts, lang=lang, company=config.device.company)


def _engine_name(engine: TtsEngine) -> str:
    from appliance.speech.tts import PiperEngine

    return ENGINE_PIPER if isinstance(engine, PiperEngine) else "espeak-ng"


@click.group()
def sounds() -> None:
    """Render, list and listen to the spoken prompts (the prompt cache)."""


@sounds.command("build")
@click.option("--voice", metavar="NAME|PATH",
              help="Piper voice name (installed by setup.sh) or path to an .onnx voice "
                   "[default: speech.voice from the configuration].")
@click.option("--engine", "engine_choice", type=click.Choice([ENGINE_PIPER, ENGINE_ESPEAK]),
              default=ENGINE_PIPER, show_default=True,
              help="piper: the voice above, falling back to espeak-ng with a warning when it "
                   "is not installed; espeak: espeak-ng regardless of the voice.")
@click.option("--lang", metavar="CODE",
              help=f"Prompt language: {', '.join(LANGUAGES)} or one in speech.languages_dir "
                   "[default: device.language from the configuration].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the summary.")
@click.pass_obj
def build(obj: CliContext, voice: str | None, engine_choice: str, lang: str | None,
          as_json: bool) -> None:
    """Render every prompt and the digit words into the prompt cache.

    Clips already in the cache with the same text, voice and settings are reused. One line
    per clip goes to stderr ("rendered" or "reused", name, seconds of audio); the summary
    (voice, engine, notice version and length, fallback warning) goes to stdout.
    Each clip and the manifest are written atomically: a failed build leaves the previous
    build usable and no partial file.
    """
    from appliance.errors import ConfigError, SpeechError
    from appliance.speech.library import PromptLibrary
    from appliance.speech.tts import EspeakEngine, select_engine

    config = obj.config()
    lang = _language(config, lang)
    try:
        texts, notice_texts = _texts_and_notice(config, lang)
    except ConfigError as exc:
        _config_error(exc)
    warning: str | None
    engine: TtsEngine
    if engine_choice == ENGINE_ESPEAK:
        engine, warning = EspeakEngine(lang, config.speech.espeak_wpm,
                                       languages=for_config(config)), None
    else:
        engine, warning = select_engine(lang, voice or config.speech.voice,
                                        speed_wpm=config.speech.espeak_wpm,
                                        languages=for_config(config))
    if warning:
        click.echo(f"appliance: warning: {warning}", err=True)
    clips: list[dict[str, Any]] = []

    def progress(name: str, reused: bool, seconds: float) -> None:
        status = "reused" if reused else "rendered"
        clips.append({"name": name, "status": status, "seconds": round(seconds, 3)})
        click.echo(f"{status:<9} {name:<18} {seconds:6.2f} s", err=True)

    cache_dir = config.prompt_cache_dir
    try:
        library = PromptLibrary.build(cache_dir, lang=lang, engine=engine, texts=texts,
                                      notice_texts=notice_texts, progress=progress,
                                      languages=for_config(config))
    except SpeechError as exc:
        fail(f"rendering failed: {exc} (the previous build in {cache_dir} is unchanged)")
    except OSError as exc:
        fail(f"cannot write the prompt cache {cache_dir}: {exc}")
    summary = {
        "lang": lang,
        "voice": library.voice_id,
        "engine": _engine_name(engine),
        "notice_version": library.notice_version,
        "notice_s": round(library.notice.size / _rate(), 3),
        "notice_details_s": round(library.notice_layer("notice_details").size / _rate(), 3),
        "notice_short_s": round(library.notice_layer("notice_short").size / _rate(), 3),
        "rendered": sum(c["status"] == "rendered" for c in clips),
        "reused": sum(c["status"] == "reused" for c in clips),
        "cache_dir": str(cache_dir),
        "warning": warning,
        "clips": clips,
    }
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False, indent=2))
        return
    language = for_config(config).get(lang)
    rows = [
        ("voice", summary["voice"]),
        ("engine", summary["engine"]),
        # Which folder spoke: an added language (speech.languages_dir) shows its own path.
        ("language", f"{lang} ({language.name}, {language.directory})"),
        ("notice version", summary["notice_version"]),
        ("notice length", f"{summary['notice_s']:.1f} s first layer, "
                          f"{summary['notice_details_s']:.1f} s details, "
                          f"{summary['notice_short_s']:.1f} s returning caller"),
        ("clips", f"{len(clips)} ({summary['rendered']} rendered, {summary['reused']} reused)"),
        ("cache", summary["cache_dir"]),
    ]
    if warning:
        rows.append(("WARNING", f"fell back to espeak-ng: {warning}"))
    for key, value in rows:
        click.echo(f"{key:<15} {value}")


def _rate() -> int:
    from appliance.speech.condition import PHONE_RATE_HZ

    return PHONE_RATE_HZ


def _read_manifest(cache_dir: Path, lang: str) -> dict[str, Any]:
    from appliance.speech.library import PromptLibrary

    path = PromptLibrary.manifest_path(cache_dir, lang)
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(f"no prompts built for {lang!r} in {cache_dir}; run `appliance sounds build`")
    except (OSError, ValueError) as exc:
        fail(f"unreadable prompt manifest {path}: {exc}; run `appliance sounds build`")
    return manifest


@sounds.command("list")
@click.option("--lang", metavar="CODE",
              help=f"Prompt language: {', '.join(LANGUAGES)} or one in speech.languages_dir "
                   "[default: device.language from the configuration].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_obj
def list_clips(obj: CliContext, lang: str | None, as_json: bool) -> None:
    """List the clips of the last build with their durations.

    Exit 1 when nothing was built or a clip is missing or corrupt (rebuild then).
    """
    from appliance.errors import ConfigError
    from appliance.speech.library import read_clip

    config = obj.config()
    lang = _language(config, lang)
    cache_dir = config.prompt_cache_dir
    manifest = _read_manifest(cache_dir, lang)
    try:
        _, notice_texts = _texts_and_notice(config, lang)
    except ConfigError as exc:
        _config_error(exc)
    # The daemon refuses a build whose notice differs from the configuration (library.load).
    stale = manifest.get("notice_texts") != notice_texts
    clips: list[dict[str, Any]] = []
    for name, file_name in manifest.get("clips", {}).items():
        audio = read_clip(cache_dir / file_name)
        clips.append({
            "name": name,
            "file": file_name,
            "seconds": None if audio is None else round(audio.size / _rate(), 3),
        })
    broken = [c["name"] for c in clips if c["seconds"] is None]
    result = {
        "lang": lang,
        "voice": manifest.get("voice_id"),
        "notice_version": manifest.get("notice_version"),
        "stale_notice": stale,
        "cache_dir": str(cache_dir),
        "clips": clips,
    }
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        click.echo(f"voice {result['voice']}, notice version {result['notice_version']}")
        for clip in clips:
            length = "MISSING/CORRUPT" if clip["seconds"] is None else f"{clip['seconds']:6.2f} s"
            label = _LAYER_LABELS.get(clip["name"], "")
            click.echo(f"  {clip['name']:<18} {length:>15}  {clip['file']}"
                       + (f"  ({label})" if label else ""))
        if stale:
            click.echo("the configured notice differs from the built one: run "
                       "`appliance sounds build`", err=True)
    if broken:
        fail("missing or corrupt clips: " + ", ".join(broken) + "; run `appliance sounds build`")


@sounds.command("say")
@click.argument("name")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="WAV file to write (8 kHz mono 16-bit); a new file "
                                  "unless --force.")
@click.option("--force", is_flag=True,
              help="Replace an existing regular file at --out (never anything else).")
@click.option("--lang", metavar="CODE",
              help=f"Prompt language: {', '.join(LANGUAGES)} or one in speech.languages_dir "
                   "[default: device.language from the configuration].")
@click.pass_obj
def say(obj: CliContext, name: str, out_path: Path, force: bool, lang: str | None) -> None:
    """Write the rendered clip NAME to a WAV file, for listening.

    NAME is a clip from `appliance sounds list` (notice, goodbye, 0..9, beep, …) or a call
    reference such as 427-193-53, assembled as the caller hears it. Nothing is rendered: the
    clips come from the last `appliance sounds build`.
    """
    from appliance.errors import ReferenceFormatError, SpeechError
    from appliance.reference import parse_reference
    from appliance.speech.library import PromptLibrary, write_clip

    config = obj.config()
    lang = _language(config, lang)
    try:
        library = PromptLibrary.load(config.prompt_cache_dir, lang=lang)
    except SpeechError as exc:
        fail(f"{exc}; run `appliance sounds build`")
    if name in library.names:
        audio = library.clip(name)
    else:
        try:
            audio = library.reference_audio(parse_reference(name))
        except ReferenceFormatError:
            fail(f"no clip {name!r}; clips: {', '.join(sorted(library.names))} "
                  "(or give an 8-digit reference)")
    replace = check_output_path(out_path, force=force, option="--out")
    try:
        write_clip(out_path, audio, replace=replace)
    except FileExistsError:
        fail(f"{out_path} appeared while writing; left alone")
    except OSError as exc:
        fail(f"cannot write {out_path}: {exc}")
    click.echo(f"wrote {out_path} ({audio.size / _rate():.2f} s)")


def register(group: click.Group) -> None:
    """Add the ``sounds`` group to the ``appliance`` group."""
    group.add_command(sounds)
