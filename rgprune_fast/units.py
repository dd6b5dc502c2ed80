"""What is scored: :class:`Unit` names a module and which of its channels are the units."""

from __future__ import annotations

from dataclasses import dataclass

SIDES = ("output", "input")


@dataclass(frozen=True)
class Unit:
    """The channels of module ``name``'s output (``side="output"``, the default) or input
    (``side="input"``, always its last dim), optionally summed over contiguous groups of ``group``
    channels before the abs/square (e.g. attention heads: the input of the attention output projection
    with ``group=head_dim``). Scores come back under :attr:`key` with ``channels // group`` entries."""

    name: str
    side: str = "output"
    group: int = 1

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Unit name must be a submodule name, got {self.name!r}")
        if self.side not in SIDES:
            raise ValueError(f"Unit side must be 'output' or 'input', got {self.side!r}")
        if not isinstance(self.group, int) or isinstance(self.group, bool) or self.group < 1:
            raise ValueError(f"Unit group must be a positive int, got {self.group!r}")

    @property
    def key(self) -> str:
        """The key of this unit's scores: ``name`` for outputs, ``"name:input"`` for inputs."""
        return self.name if self.side == "output" else f"{self.name}:input"
