"""The chain's archive: every call encrypted with age into S3-compatible object storage, the
index replicated there by Litestream, restore, verify and the head office's view.

docs/archive.md describes the layout in the bucket and the processes; nothing in here runs
inside the call-handling daemon (its CPU and memory stay as they were).
"""
