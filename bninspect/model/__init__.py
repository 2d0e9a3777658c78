"""``bninspect model``: every batch norm of a whole network, from the user's code, a checkpoint
or a torch.export program. Modules named here that run torch import it at module level (the
TID253 ignore in pyproject.toml); the rest stay light."""
