"""Hungarian (the default language): docs/languages.md."""
