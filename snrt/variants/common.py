"""What every kind of variant space shares: the error for a family section it cannot rebuild."""

from __future__ import annotations


class SpaceSpecError(ValueError):
    """A manifest's family section that no variant space here can rebuild: (field, problem)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem
