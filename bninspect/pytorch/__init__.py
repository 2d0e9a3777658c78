"""The PyTorch side: PyTorch's own module as the implementation under inspection (the only
place torch runs), its CPU arithmetic emulated step by step, and one inspection that feeds the
same batches through it and the reference."""
