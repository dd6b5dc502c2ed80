"""The structure probe: one forward pass, on the first examples of the first batch, that records how
the model's modules connect, so that each scored module can be given a tap that is exact.

It records, for every module call: its first input tensor and output tensor, their autograd edges and
their in-place versions, at the call and at the end of the forward pass. From that and the autograd
graph it answers: was the module called; does its output go straight into a BatchNorm; is its output
(or a view of it) the model's output; is its output modified in place later; is a ReLU module the only
differentiable consumer of its output.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import module_rules
from .batching import Batch, logits_of
from .model_state import override_forward, requires_grad

PROBE_EXAMPLES = 2


def edge_of(t: torch.Tensor | None):
    """The autograd edge a tensor's gradient flows into (``None`` for tensors outside the graph)."""
    if t is None or t.grad_fn is None:
        return None
    return (t.grad_fn, t.output_nr)


def edge_key(edge):
    return None if edge is None else (id(edge[0]), edge[1])


@dataclass(eq=False)
class Call:
    """One call of one module during the probe."""

    name: str
    module: nn.Module
    inp: torch.Tensor | None
    inp_key: tuple | None
    inp_version: int
    out: torch.Tensor | None = None
    out_edge: tuple | None = None
    out_version: int = 0
    inplace: bool = False  # an in-place ReLU/ReLU6 module, run out of place by the probe
    grad_enabled: bool = True  # False: the call ran under no_grad (e.g. reentrant checkpointing)


class ProbeResult:
    """What the probe saw; answers the structural questions the module selection and taps ask."""

    def __init__(self, calls: dict[str, list[Call]], consumers: dict[tuple, list], output: torch.Tensor, nodes: list):
        self.calls = calls  # module name -> its calls, in call order
        self.consumers = consumers  # edge key -> autograd nodes that consume it
        self.output = output  # the logits
        self.examples = output.shape[0]
        self._nodes = nodes  # keeps graph nodes alive while their ids are compared
        # id(tensor) -> the calls that returned it (their pristine output) / took it as first input
        self._returned: dict[int, list[Call]] = defaultdict(list)
        self._taken: dict[int, list[Call]] = defaultdict(list)
        for module_calls in calls.values():
            for c in module_calls:
                if c.out is not None:
                    self._returned[id(c.out)].append(c)
                if c.inp is not None:
                    self._taken[id(c.inp)].append(c)

    def _modified_later(self, t: torch.Tensor | None, version: int) -> bool:
        if t is None:
            return False
        return t._version != version or any(c.inplace and c.inp_version >= version for c in self._taken.get(id(t), []))

    def output_modified_later(self, call: Call) -> bool:
        """Whether something writes to ``call``'s output in place after the call."""
        return self._modified_later(call.out, call.out_version)

    def input_modified_later(self, call: Call) -> bool:
        return self._modified_later(call.inp, call.inp_version)

    def produces_output(self, name: str) -> bool:
        """Whether the module's output, or a view of it, is the model's output."""
        ptr = self.output.untyped_storage().data_ptr()
        return any(c.out is not None and c.out.untyped_storage().data_ptr() == ptr for c in self.calls.get(name, ()))

    def _pristine_sources(self, call: Call) -> list[Call]:
        """The calls whose unmodified output is ``call``'s first input."""
        if call.inp is None:
            return []
        return [c for c in self._returned.get(id(call.inp), []) if c.out_version == call.inp_version]

    def feeds_batchnorm(self, name: str) -> bool:
        """Whether a call's pristine output is the input of a BatchNorm call."""
        for c in self.calls.get(name, ()):
            for consumer in self._taken.get(id(c.out), []):
                if module_rules.is_batchnorm(consumer.module) and c in self._pristine_sources(consumer):
                    return True
        return False

    def producer_of(self, name: str) -> str | None:
        """The Conv/Linear whose pristine output is the input of every call of module ``name``."""
        found = set()
        for call in self.calls.get(name, ()):
            sources = [c.name for c in self._pristine_sources(call) if module_rules.is_producer(c.module)]
            found.add(sources[0] if len(sources) == 1 else None)
        return found.pop() if len(found) == 1 else None

    def relu_consumer(self, call: Call) -> Call | None:
        """The ReLU/ReLU6 module call that is the only differentiable consumer of ``call``'s output."""
        key = edge_key(call.out_edge)
        nodes = self.consumers.get(key, []) if key is not None else []
        if len(nodes) != 1:
            return None
        for r in self._taken.get(id(call.out), []):
            if (
                isinstance(r.module, module_rules.RELU_TYPES)
                and r.inp_key == key
                and r.out_edge is not None
                and r.out_edge[0] is nodes[0]
            ):
                return r
        return None


def _consumers(root) -> tuple[dict[tuple, list], list]:
    consumers: dict[tuple, list] = defaultdict(list)
    seen, stack, nodes = {id(root)}, [root], [root]
    while stack:
        node = stack.pop()
        for nxt, nr in node.next_functions:
            if nxt is None:
                continue
            consumers[(id(nxt), nr)].append(node)
            if id(nxt) not in seen:
                seen.add(id(nxt))
                nodes.append(nxt)
                stack.append(nxt)
    return consumers, nodes


def _first_tensor(args: tuple) -> torch.Tensor | None:
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


def _out_of_place_relu(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    upper = module_rules.relu_upper(module)
    return F.relu(x) if upper is None else F.hardtanh(x, 0.0, upper)


def run_probe(model: nn.Module, batch: Batch) -> ProbeResult:
    """Run the probe forward (eval mode is the caller's business) with every parameter requiring grad,
    so that the autograd graph shows every differentiable connection. ReLU/ReLU6 modules run out of
    place, so that the graph shows the pristine output's consumers; their in-place writes are
    accounted for by :meth:`ProbeResult.output_modified_later`."""
    calls: dict[str, list[Call]] = defaultdict(list)
    open_calls: dict[int, list[Call]] = defaultdict(list)
    handles = []

    def pre_hook(name):
        def hook(module, args):
            inp = _first_tensor(args)
            call = Call(name, module, inp, edge_key(edge_of(inp)), inp._version if inp is not None else 0)
            call.inplace = isinstance(module, module_rules.RELU_TYPES) and module.inplace
            call.grad_enabled = torch.is_grad_enabled()
            open_calls[id(module)].append(call)

        return hook

    def post_hook(module, args, out):
        call = open_calls[id(module)].pop()
        if isinstance(out, torch.Tensor):
            call.out, call.out_edge, call.out_version = out, edge_of(out), out._version
        calls[call.name].append(call)

    overrides = []
    try:
        for name, module in model.named_modules():
            if module is model:
                continue
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(post_hook))
            if isinstance(module, module_rules.RELU_TYPES) and module.inplace:
                overrides.append(override_forward(module, _out_of_place_relu))
        with torch.enable_grad(), requires_grad(model.parameters(), True):
            y = logits_of(batch.call(model))
    finally:
        for h in handles:
            h.remove()
        for restore in overrides:
            restore()
    consumers, nodes = _consumers(y.grad_fn) if y.grad_fn is not None else ({}, [])
    return ProbeResult(dict(calls), consumers, y, nodes)
