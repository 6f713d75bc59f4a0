"""qsched: a two-level scheduler for hybrid quantum-classical HPC jobs."""
__version__ = "0.1.0"

from .errors import QschedError  # noqa: E402


def __getattr__(name):
    # the client pulls in numpy and http machinery: import it when asked, keep `import qsched` light
    if name in ("Client", "AsyncClient", "TaskResult"):
        from . import client
        return getattr(client, name)
    raise AttributeError(name)


__all__ = ["Client", "AsyncClient", "TaskResult", "QschedError", "__version__"]
