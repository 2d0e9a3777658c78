"""``check``: someone else's output against the reference, and the catalogue of known mistakes
that would explain it."""
