"""The execution choices, in a module that imports nothing heavy, so the command line can list
them without importing torch. None of them changes result bytes."""

__all__ = ["EXECUTION_MODES", "IPC_MODES"]

#: sequential: one client after another; threads: a thread pool sharing memory; processes:
#: a persistent process pool.
EXECUTION_MODES = ("sequential", "threads", "processes")

#: How a process pool moves tensors: shared-memory segments, or files on disk (less memory).
IPC_MODES = ("shared_memory", "storage")
