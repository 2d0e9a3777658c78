"""The numerics core: the float64 reference statistics and output, running statistics by each
convention, and how far a value is from the reference.
Pure functions over numpy arrays; no torch."""
