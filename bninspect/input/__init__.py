"""Input: option strings parsed, .npy files read and written safely, the tensor generated or
loaded and vetted, and whether it fits in memory. No statistics here."""
