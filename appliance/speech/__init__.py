"""Speech: prompt texts, TTS rendering (Piper, espeak-ng fallback), telephone conditioning.

A bare ``§N`` in these modules cites docs/audio.md.
"""
