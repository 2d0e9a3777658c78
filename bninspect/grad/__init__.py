"""The backward pass: the float64 reference gradients, PyTorch's autograd beside them, the
step-by-step derivation of one element, and the catalogue of backward mistakes ``check`` names."""
