"""Course-compatible functional layers (written in the next commit)."""
