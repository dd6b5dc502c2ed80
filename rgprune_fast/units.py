"""What is scored: :class:`Unit` names a module and which of its channels are the units."""

from __future__ import annotations

from dataclasses import dataclass

SIDES = ("output", "input", "experts")


@dataclass(frozen=True)
class Unit:
    """The channels of module ``name``'s output (``side="output"``, the default) or input
    (``side="input"``, always its last dim), or the neurons of every expert of a Mixture-of-Experts
    experts module (``side="experts"``: ``experts * neurons`` units, expert-major).
    ``channels_per_unit`` contiguous channels make one unit:
    their statistics are summed before the abs/square (e.g. an attention head is ``head_dim``
    channels of the input of the attention output projection). Scores come back under :attr:`key`
    with ``channels // channels_per_unit`` entries."""

    name: str
    side: str = "output"
    channels_per_unit: int = 1

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Unit name must be a submodule name, got {self.name!r}")
        if self.side not in SIDES:
            raise ValueError(f"Unit side must be 'output', 'input' or 'experts', got {self.side!r}")
        width = self.channels_per_unit
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"Unit channels_per_unit must be a positive int, got {width!r}")

    @property
    def key(self) -> str:
        """The key of this unit's scores: ``name`` for outputs, ``"name:input"`` / ``"name:experts"`` otherwise."""
        return self.name if self.side == "output" else f"{self.name}:{self.side}"


def split_key(key: str) -> tuple[str, str]:
    """``(module name, side)`` of a scores / masks key: ``"a.b:input"`` -> ``("a.b", "input")``,
    ``"a.b"`` -> ``("a.b", "output")``. Module names never contain ``:``, so the suffix is unambiguous."""
    name, sep, side = key.rpartition(":")
    if sep and side in SIDES[1:]:
        return name, side
    return key, "output"
