"""The output gradient ``g`` that is backpropagated (docs/design.md, "The mathematics").

* ``"label"``: ``d(sum_n CE(y_n, t_n))/dy = softmax(y) - onehot(t)``; targets equal to ``-100`` are
  ignored (zero gradient), as in :func:`torch.nn.functional.cross_entropy`. For a confident prediction
  ``p_t - 1`` cancels, so it is formed as ``expm1(log_softmax_t)``, and float32 logits are taken
  through the softmax in float64 (in chunks): within float32 rounding of the exact gradient, where
  PyTorch's own float32 cross-entropy backward loses digits.
* ``"random"``: i.i.d. N(0, 1) of the output's shape, drawn in float32 from one
  ``torch.Generator(device).manual_seed(seed)`` per ``score`` call, batch after batch (reproducible).
* a callable ``(output, batch) -> tensor`` of the output's shape.

With ``normalize=True`` each output vector (the last dim) is scaled to unit L2 norm (plus ``EPS``).
Gradients are formed in float32 (float64 for float64 outputs) and cast to the output's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import torch

from ..backends.contract import stat_dtype
from .batching import padding_mask, scored_output

EPS = 1e-12
IGNORE_INDEX = -100
GRADIENTS = ("label", "random")

GradientSpec = Union[str, Callable[[torch.Tensor, Any], torch.Tensor]]


def check_gradient(gradient: GradientSpec) -> None:
    if callable(gradient):
        return
    if not isinstance(gradient, str) or gradient not in GRADIENTS:
        raise ValueError(
            f"unknown gradient {gradient!r}; use 'label', 'random' or a callable (output, batch) -> tensor"
        )


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


def check_seed(seed: int, offset: int = 0) -> None:
    """``seed`` (plus this rank's ``offset``) must be an int ``torch.Generator.manual_seed`` accepts."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    low, high = SEED_RANGE
    if not low <= seed + offset <= high:
        raise ValueError(f"seed must lie in [-2**63, 2**64 - 1 - rank], got {seed}")


def check_targets(output: torch.Tensor, targets) -> torch.Tensor:
    """Validate class-index targets against the output; returns them on the output's device."""
    if targets is None:
        raise ValueError(
            "gradient='label' needs targets: pass batches as (inputs, targets) tuples or dicts with a "
            "'labels' entry, or use gradient='random'"
        )
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a tensor of class indices, got {type(targets).__name__}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.is_complex():
        raise TypeError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if tuple(targets.shape) != tuple(output.shape[:-1]):
        raise ValueError(
            f"targets of shape {tuple(targets.shape)} do not fit the model output of shape "
            f"{tuple(output.shape)}: expected {tuple(output.shape[:-1])} (one class index per output vector)"
        )
    classes = output.shape[-1]
    if targets.device.type == "cpu" and targets.numel():  # range check without a device sync
        valid = targets[targets != IGNORE_INDEX]
        if valid.numel() and (valid.min() < 0 or valid.max() >= classes):
            raise ValueError(
                f"targets must lie in [0, {classes}) (or be {IGNORE_INDEX}); got min "
                f"{int(valid.min())}, max {int(valid.max())}"
            )
    return targets.to(output.device)


def shift_targets(targets):
    """Causal language models: position t predicts token t + 1; the last position predicts nothing."""
    if not isinstance(targets, torch.Tensor) or targets.dim() < 2:
        return targets  # check_targets reports it
    shifted = torch.full_like(targets, IGNORE_INDEX)
    shifted[:, :-1] = targets[:, 1:]
    return shifted


def label_gradient(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``softmax(logits) - onehot(targets)`` over the last dim (rows with target -100: zero).

    The target entry ``p_t - 1`` is formed as ``expm1(log_softmax_t)``: for a confident prediction
    ``p_t - 1`` cancels to a few ulp of 1, which in float32 would lose most of its digits."""
    log_p = torch.log_softmax(logits, dim=-1)
    g = log_p.exp()
    keep = targets != IGNORE_INDEX
    safe = torch.where(keep, targets, 0).long().unsqueeze(-1)
    g.scatter_(-1, safe, torch.expm1(log_p.gather(-1, safe)))
    return g * keep.unsqueeze(-1)


def random_gradient(output: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """i.i.d. N(0, 1) of ``output``'s shape, drawn in float32 (float64 outputs: cast up)."""
    g = torch.randn(output.shape, generator=generator, device=output.device, dtype=torch.float32)
    return g.to(stat_dtype(output.dtype))


def normalize_rows(g: torch.Tensor) -> torch.Tensor:
    """Scale every vector along the last dim to unit L2 norm (``EPS`` keeps zero rows at zero)."""
    return g / (torch.linalg.vector_norm(g, dim=-1, keepdim=True) + EPS)


CHUNK_ELEMENTS = 1 << 26  # rows of larger outputs are made in chunks of about this many elements


class OutputGradient:
    """Makes ``g`` for each batch of one ``score`` call (owns the seeded generator).

    ``g`` is written straight into a tensor of the output's dtype, a chunk of rows (output vectors) at a
    time, normalised in place, so that an LLM's ``[N, T, vocab]`` gradient costs one output-sized tensor
    plus one chunk of float32 scratch (float64, half the rows, for the label gradient of float32 logits);
    an output of one chunk whose draw has the output's dtype costs the draw alone. Outputs with at
    most ``CHUNK_ELEMENTS`` elements are one chunk (the random draws of a chunked output therefore
    differ from one big draw; both are deterministic).
    """

    def __init__(self, gradient: GradientSpec, normalize: bool, seed: int, device: torch.device, shift: bool = False):
        check_gradient(gradient)
        check_seed(seed)
        self.gradient = gradient
        self.normalize = bool(normalize)
        self.shift = shift  # causal LM: labels are shifted by one position
        self.generator = torch.Generator(device=device).manual_seed(seed) if gradient == "random" else None

    def __call__(self, output: torch.Tensor, targets: torch.Tensor | None, batch: Any) -> torch.Tensor:
        if callable(self.gradient):
            g = self.gradient(output.detach(), batch)
            if not isinstance(g, torch.Tensor):
                raise TypeError(f"the gradient callable returned {type(g).__name__}, expected a tensor")
            if g.shape != output.shape:
                raise ValueError(
                    f"the gradient callable returned shape {tuple(g.shape)}; the model output has shape "
                    f"{tuple(output.shape)}"
                )
            g = g.to(device=output.device, dtype=stat_dtype(output.dtype))
            return (normalize_rows(g) if self.normalize else g).to(output.dtype)
        if self.gradient == "label":
            targets = check_targets(output, shift_targets(targets) if self.shift else targets).reshape(-1)
        acc = stat_dtype(output.dtype)
        if self.gradient == "label" and output.dtype == torch.float32:
            # softmax - onehot cancels for confident predictions; float32 logits are exact in float64
            acc = torch.float64
        rows = output.detach().reshape(-1, output.shape[-1])
        elements = CHUNK_ELEMENTS // 2 if acc == torch.float64 and output.dtype != torch.float64 else CHUNK_ELEMENTS
        step = max(1, elements // max(1, rows.shape[1]))
        g = None
        for start in range(0, rows.shape[0], step):
            chunk = slice(start, start + step)
            if self.gradient == "label":
                part = label_gradient(rows[chunk].to(acc), targets[chunk])
            else:
                part = random_gradient(rows[chunk], self.generator)
            if self.normalize:  # in place (the same arithmetic as normalize_rows): no second chunk-sized buffer
                part.div_(torch.linalg.vector_norm(part, dim=-1, keepdim=True) + EPS)
            if start == 0 and step >= rows.shape[0] and part.dtype == output.dtype:
                return part.view(output.shape)  # one chunk of the output's dtype: the draw is g itself
            if g is None:
                g = torch.empty_like(rows, memory_format=torch.contiguous_format)
            g[chunk] = part
            del part  # before the next chunk is drawn: one chunk of scratch at a time
        if g is None:  # no rows
            g = torch.empty_like(rows, memory_format=torch.contiguous_format)
        return g.view(output.shape)


def output_and_gradient(raw_output: Any, batch, output_gradient: OutputGradient) -> tuple[torch.Tensor, torch.Tensor]:
    """The scored output of a model call and its gradient ``g`` (every scorer's one way): the logits, or an
    encoder's first output with ``g`` zero at padding positions (``attention_mask``); ``"label"`` needs
    logits."""
    output, is_logits = scored_output(raw_output)
    if not is_logits and output_gradient.gradient == "label":
        raise ValueError(
            "gradient='label' needs logits, but the model output has none (an encoder's last_hidden_state is "
            "scored); use gradient='random' or a callable"
        )
    g = output_gradient(output, batch.targets, batch.raw)
    mask = None if is_logits else padding_mask(batch, output)
    if mask is not None:  # hidden states at padding positions are not part of the output
        g = g * mask.to(g.dtype).view(*mask.shape, *[1] * (g.dim() - 2))
    return output, g
