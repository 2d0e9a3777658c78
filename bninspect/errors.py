"""The two kinds of error a user can fix, each printed as one line with its exit code."""


class BnInspectError(Exception):
    """Input that cannot be inspected (a missing file, a tensor too large, ...): exit code 1.

    The message is a full sentence naming what is wrong and what to do; the CLI prints it after
    ``Error: `` and nothing else (no traceback).
    """

    exit_code = 1


class OptionError(BnInspectError):
    """A malformed option value, or one that does not fit the input: exit code 2, like typer's own
    usage errors."""

    exit_code = 2


# How PyTorch says an allocation failed: c10's CPU allocator raises a RuntimeError ("[enforce
# fail at alloc_cpu.cpp:...] ... DefaultCPUAllocator: can't allocate memory: you tried to
# allocate N bytes"); its device allocators raise torch.OutOfMemoryError.
_ALLOCATION_FAILURES = ("can't allocate memory", "DefaultCPUAllocator", "out of memory")


def is_allocation_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is memory running out (numpy's MemoryError, or torch's way of saying
    it), not a refusal of the input: reported as "ran out of memory", never as the input's
    fault."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(words in text for words in _ALLOCATION_FAILURES)


def torch_refusal(exc: Exception) -> Exception:
    """The error to raise for an exception torch raised on the input: MemoryError where an
    allocation failed (the command line says "ran out of memory"), else the refusal in words."""
    if is_allocation_failure(exc):
        return MemoryError(str(exc))
    return BnInspectError(f"PyTorch refused this input: {exc}")
