"""Rendering: result objects as rich tables or one strict JSON document. Formats; never computes."""
