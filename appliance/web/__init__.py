"""The owner's page: find, play, hand over and erase calls from a browser (docs/web.md)."""
