"""Qiskit on qsched: V2 primitives, a BackendV2 over a pool, jobs and errors.

    from qsched.qiskit import EstimatorV2, SamplerV2, QschedBackend
    job = EstimatorV2().run([(circuit, observables, parameter_values)])
"""
from .backend import QschedBackend, build_target
from .jobs import QschedJob, QschedPrimitiveJob
from .primitives import EstimatorV2, SamplerV2
from .session import QschedJobError, QschedJobTimeoutError

__all__ = ["EstimatorV2", "SamplerV2", "QschedBackend", "QschedJob", "QschedPrimitiveJob",
           "QschedJobError", "QschedJobTimeoutError", "build_target"]
