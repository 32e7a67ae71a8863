"""The execution choices, in a module that imports nothing heavy, so the command line can list
them without importing torch. None of them changes result bytes."""

__all__ = ["CODE_SOURCES", "EXECUTION_MODES", "IPC_MODES", "RAY_INSTALL_HINT"]

#: sequential: one client after another; threads: a thread pool sharing memory; processes:
#: a persistent process pool; ray: Ray actors, on this machine or across a Ray cluster.
EXECUTION_MODES = ("sequential", "threads", "processes", "ray")

#: What to install for `ray` mode (Ray is an optional extra).
RAY_INSTALL_HINT = "pip install 'blazefl[ray]' (or: pip install 'ray>=2.9')"

#: How a process pool moves tensors: shared-memory segments, or files on disk (less memory).
IPC_MODES = ("shared_memory", "storage")

#: Which user code `blazefl verify` re-executes with: auto (this folder's when it matches the
#: run's record, else the run's own copy), the run's own copy, or this folder's.
CODE_SOURCES = ("auto", "run", "here")
