"""``run`` and ``explain``: their result objects built from an inspection."""
