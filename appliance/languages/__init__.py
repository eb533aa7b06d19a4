"""Languages: one folder per language, found and checked by :mod:`appliance.languages.registry`.

How to add one: docs/languages.md.
"""
