"""Speech: prompt texts, TTS rendering (Piper, espeak-ng fallback), telephone conditioning."""
