"""How each framework's batch norm computes, as plain data, and the reference card built from it."""
