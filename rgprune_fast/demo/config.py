"""What the demo runs: the full protocol, and the ``--quick`` cut-down of it.

The paper's protocol (Sapkota & Bhattarai, section 3): importances from D training examples, the P
least important units pruned globally, accuracy on the test split. ``--quick`` keeps every criterion,
gradient and normalisation (20 variants) and both networks, but trains them for fewer
epochs on 14x14 images (MNIST area-averaged from 28x28), uses D in {10, all} instead of
{2, 10, 100, all}, five pruning levels (10 % to 50 % of the units) instead of ten (5 % to 50 %), and
128 ``mc_gradient`` steps instead of 352,
so that it finishes in about a minute on one core of a 2-core CPU, training included.

Both also run ``mc_gradient`` (Sándor et al.; :class:`MCSettings`) on the same D examples, with and
without labels, and, at the largest D, record its keep probabilities after fewer steps too: its
accuracy for each amount of compute, to set against the Taylor criteria's at each D.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..criteria import METHODS


@dataclass(frozen=True)
class MCSettings:
    """How the demo runs ``mc_gradient``. Per step: ``samples`` masked copies of ``batch`` examples
    (fewer when D is smaller), plus one unmasked forward label-free. ``keep=0.9``: each sampled mask
    switches off ~10 % of the units, so that the masked networks still classify and their scores
    say which units matter (with 0.5, every sample is near chance and the ranking is noise)."""

    samples: int = 32
    steps: int = 352
    batch: int = 16
    lr: float = 1.0
    keep: float = 0.9
    # at the largest D, also evaluated after the steps whose compute is these multiples of a Taylor pass
    compute_multiples: tuple[float, ...] = (0.25, 1.0, 4.0)

    def options(self) -> dict:
        return {"samples": self.samples, "steps": self.steps, "lr": self.lr, "keep": self.keep}


@dataclass(frozen=True)
class DemoConfig:
    name: str
    width: int  # channels of the first stage (stages: w, 2w, 4w)
    epochs: int
    data_sizes: tuple[int | None, ...]  # D; None = the whole training split
    prune_fractions: tuple[float, ...]  # P as fractions of the prunable units (one unit per layer is kept)
    test_examples: int | None  # None = the whole test split
    image_size: int | None = None  # side of the (area-resampled) images; None = native (28 for MNIST)
    architectures: tuple[str, ...] = ("resnet", "vgg")
    methods: tuple[str, ...] = METHODS
    mc_gradient: MCSettings | None = MCSettings()  # None: Taylor criteria only
    gradients: tuple[str, ...] = ("label", "random")
    normalizations: tuple[bool, ...] = (False, True)
    data: str = "auto"
    train_batch: int = 64
    learning_rate: float = 0.05
    score_batch: int = 256  # batches of the importance pass (molchanov_bn squares per-batch sums)
    seed: int = 0

    def training_key(self) -> dict:
        """What determines the trained weights (the cache key)."""
        keys = ("width", "epochs", "data", "image_size", "train_batch", "learning_rate", "seed")
        return {k: v for k, v in asdict(self).items() if k in keys}


QUICK = DemoConfig(
    name="quick",
    width=16,
    epochs=3,
    data_sizes=(10, None),
    prune_fractions=(0.1, 0.2, 0.3, 0.4, 0.5),
    test_examples=None,
    image_size=14,
    mc_gradient=MCSettings(steps=128),
)

FULL = DemoConfig(
    name="full",
    width=16,
    epochs=8,
    data_sizes=(2, 10, 100, None),
    prune_fractions=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5),
    test_examples=None,
)

CONFIGS = {"quick": QUICK, "full": FULL}
