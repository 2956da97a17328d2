"""The one exception type that bad input raises, so callers can catch it and report it."""

from __future__ import annotations


class SampleError(ValueError):
    """A sample's input is missing, malformed or inconsistent.

    The message always names the sample, the file and the problem, e.g.
    ``sample NCBI785: st/NCBI785.h5ad: 12 cells have negative counts``.
    """

    def __init__(self, sample: str | None, file: str | None, problem: str):
        self.sample = sample
        self.file = file
        self.problem = problem
        parts = []
        if sample:
            parts.append(f"sample {sample}")
        if file:
            parts.append(str(file))
        parts.append(problem)
        super().__init__(": ".join(parts))

    def __reduce__(self):  # keep the three fields across pickling (Ray tasks)
        return (type(self), (self.sample, self.file, self.problem))
