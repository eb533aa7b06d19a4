"""Store: the SQLite index, the crash-safe recorder, the audit chain."""
