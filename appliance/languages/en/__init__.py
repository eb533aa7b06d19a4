"""English: docs/languages.md."""
