"""The structure probe: one forward pass, on the first examples of the first batch, that records how
the model's modules connect, so that each scored module can be given a tap that is exact.

It records, for every module call: its first input tensor and output tensor, their autograd edges and
their in-place versions, at the call and at the end of the forward pass. From that and the autograd
graph it answers: was the module called; does its output go straight into a BatchNorm; is its output
(or a view of it) the model's output; is its output modified in place later; is a fused activation module
(ReLU, ReLU6, LeakyReLU: engine/activations.py) the only differentiable consumer of its output.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from . import activations, module_rules
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


def alias_key(t: torch.Tensor) -> tuple:
    """Equal for two tensors that are the same values in the same memory (a module's output and the
    alias a full backward hook hands on in its place); the probe keeps every tensor it compares alive."""
    try:
        storage = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # no plain storage (sparse, nested): identity only
        return (id(t),)
    return (storage, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device)


def _storage_ptr(t: torch.Tensor):
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # no plain storage: identity only
        return ("id", id(t))


def is_folded(t: torch.Tensor | None, examples: int) -> bool:
    """Whether ``t`` may hold the batch folded into dim 0 (``[N * k, ..., C]``, k > 1)."""
    return t is not None and t.dim() >= 2 and t.shape[0] != examples and t.shape[0] % examples == 0


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
    inplace: bool = False  # an in-place fused activation module, run out of place by the probe
    grad_enabled: bool = True  # False: the call ran under no_grad (e.g. reentrant checkpointing)
    snapshots: dict = field(default_factory=dict)  # side -> a copy at call time of a folded [N * k, ...] tensor


class ProbeResult:
    """What the probe saw; answers the structural questions the module selection and taps ask."""

    def __init__(self, calls: dict[str, list[Call]], consumers: dict[tuple, list], output: torch.Tensor, nodes: list):
        self.calls = calls  # module name -> its calls, in call order
        self.consumers = consumers  # edge key -> autograd nodes that consume it
        self.output = output  # the logits
        self.examples = output.shape[0]
        self._nodes = nodes  # keeps graph nodes alive while their ids are compared
        # alias key -> the calls that returned it (their pristine output) / took it as first input
        self._returned: dict[tuple, list[Call]] = defaultdict(list)
        self._taken: dict[tuple, list[Call]] = defaultdict(list)
        for module_calls in calls.values():
            for c in module_calls:
                if c.out is not None:
                    self._returned[alias_key(c.out)].append(c)
                if c.inp is not None:
                    self._taken[alias_key(c.inp)].append(c)
        self._output_edges = _edges_reaching_output(output, calls)
        self._inplace_calls = [c for cs in calls.values() for c in cs if c.inplace and c.inp is not None]
        self.folds: dict[tuple[str, int, str], bool] = {}  # (name, call, side) -> rows map to examples

    def _modified_later(self, t: torch.Tensor | None, version: int) -> bool:
        """Written in place after ``version``: by anything (its version counter moved), or by an in-place
        activation module the probe ran out of place, on ``t`` or on a view of it (same storage)."""
        if t is None:
            return False
        if t._version != version:
            return True
        storage = _storage_ptr(t)
        return any(
            c.inplace and c.inp_version >= version and (c.inp is t or _storage_ptr(c.inp) == storage)
            for c in self._inplace_calls
        )

    def output_modified_later(self, call: Call) -> bool:
        """Whether something writes to ``call``'s output in place after the call."""
        return self._modified_later(call.out, call.out_version)

    def input_modified_later(self, call: Call) -> bool:
        return self._modified_later(call.inp, call.inp_version)

    def produces_output(self, name: str) -> bool:
        """Whether the module's output channels are the model's output: its output (or a view of it) is
        the model's output, or reaches it without passing through another Conv/Linear (a classifier
        conv followed by pooling, a BatchNorm after the last Linear)."""
        ptr = self.output.untyped_storage().data_ptr()
        for c in self.calls.get(name, ()):
            if c.out is not None and c.out.untyped_storage().data_ptr() == ptr:
                return True
            if edge_key(c.out_edge) in self._output_edges:
                return True
        return False

    def reads_after(self, modules) -> list[nn.Module]:
        """Of ``modules``, those whose input has another differentiable reader besides them (their own
        output may even be unused: ``act(y); return conv(y)``)."""
        wanted, found = {id(m) for m in modules}, {}
        for module_calls in self.calls.values():
            for c in module_calls:
                if id(c.module) not in wanted or c.inp_key is None:
                    continue
                own = c.out_edge[0] if c.out_edge is not None else None  # the module's own node
                if any(node is not own for node in self.consumers.get(c.inp_key, [])):
                    found[id(c.module)] = c.module
        return list(found.values())

    def _pristine_sources(self, call: Call) -> list[Call]:
        """The calls whose unmodified output is ``call``'s first input."""
        if call.inp is None:
            return []
        return [c for c in self._returned.get(alias_key(call.inp), []) if c.out_version == call.inp_version]

    def feeds_batchnorm(self, name: str) -> bool:
        """Whether a call's pristine output is the input of a BatchNorm call."""
        for c in self.calls.get(name, ()):
            for consumer in self._taken.get(alias_key(c.out), []) if c.out is not None else []:
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
        """The fused activation module call (ReLU, ReLU6, LeakyReLU) that is the only differentiable
        consumer of ``call``'s output."""
        key = edge_key(call.out_edge)
        nodes = self.consumers.get(key, []) if key is not None else []
        if len(nodes) != 1:
            return None
        for r in self._taken.get(alias_key(call.out), []) if call.out is not None else []:
            if (
                activations.fused(r.module) is not None
                and r.inp_key == key
                and r.out_edge is not None
                and r.out_edge[0] is nodes[0]
            ):
                return r
        return None


def _edges_reaching_output(output: torch.Tensor, calls: dict[str, list[Call]]) -> set:
    """Edge keys from which the output is reached without passing through a Conv/Linear's output: the
    walk back from the output stops at (and includes) the first producer outputs it meets."""
    if output.grad_fn is None:
        return set()
    producer_edges = {edge_key(c.out_edge) for cs in calls.values() for c in cs if module_rules.is_producer(c.module)}
    start = edge_key(edge_of(output))
    reached, seen, stack = {start}, {id(output.grad_fn)}, []
    if start not in producer_edges:
        stack.append(output.grad_fn)
    while stack:
        node = stack.pop()
        for nxt, nr in node.next_functions:
            if nxt is None:
                continue
            key = (id(nxt), nr)
            reached.add(key)
            if key not in producer_edges and id(nxt) not in seen:
                seen.add(id(nxt))
                stack.append(nxt)
    return reached


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


def run_probe(model: nn.Module, batch: Batch) -> ProbeResult:
    """Run the probe forward (eval mode is the caller's business) with every parameter requiring grad,
    so that the autograd graph shows every differentiable connection. In-place fused activations run out of
    place, so that the graph shows the pristine output's consumers; their in-place writes are
    accounted for by :meth:`ProbeResult.output_modified_later`."""
    calls: dict[str, list[Call]] = defaultdict(list)
    open_calls: dict[int, list[Call]] = defaultdict(list)
    handles = []
    examples = batch.examples

    def pre_hook(name):
        def hook(module, args):
            inp = _first_tensor(args)
            call = Call(name, module, inp, edge_key(edge_of(inp)), inp._version if inp is not None else 0)
            call.inplace = module in fused_inplace
            call.grad_enabled = torch.is_grad_enabled()
            if examples and is_folded(inp, examples):
                call.snapshots["input"] = inp.detach().clone()
            open_calls[id(module)].append(call)

        return hook

    def post_hook(module, args, out):
        call = open_calls[id(module)].pop()
        if isinstance(out, torch.Tensor):
            call.out, call.out_edge, call.out_version = out, edge_of(out), out._version
            if examples and is_folded(out, examples):
                call.snapshots["output"] = out.detach().clone()
        calls[call.name].append(call)

    overrides, fused_inplace = [], set()
    try:
        for name, module in model.named_modules():
            if module is model:
                continue
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(post_hook))
            form = activations.fused(module)
            if form is not None and module.inplace:
                fused_inplace.add(module)
                overrides.append(override_forward(module, lambda m, x, form=form: form.forward(x, inplace=False)))
        with torch.enable_grad(), requires_grad(model.parameters(), True):
            y = logits_of(batch.call(model))
    finally:
        for h in handles:
            h.remove()
        for restore in overrides:
            restore()
    consumers, nodes = _consumers(y.grad_fn) if y.grad_fn is not None else ({}, [])
    result = ProbeResult(dict(calls), consumers, y, nodes)
    result.folds = _verify_folds(model, batch, result)
    return result


FOLD_TOLERANCE = 1e-3  # relative; batch-size-dependent kernels round differently, other examples differ by O(1)


def _verify_folds(model: nn.Module, batch: Batch, probe: ProbeResult) -> dict[tuple[str, int, str], bool]:
    """For every module tensor with the batch folded into dim 0 (``[N * k, ...]``): whether rows
    ``[e * k, (e + 1) * k)`` are example ``e``'s, checked by running each probe example alone and
    comparing with the tensor as it was at the call. A fold that is a reshape of ``[N, k, ...]`` passes;
    one that interleaves examples (``[k, N, ...]``) or routes rows (Mixture-of-Experts) does not, nor
    does anything when a one-example forward fails."""
    examples = probe.examples
    wanted = {}
    for name, module_calls in probe.calls.items():
        for i, c in enumerate(module_calls):
            for side, t in (("output", c.out), ("input", c.inp)):
                if is_folded(t, examples):
                    wanted[(name, i, side)] = c.snapshots.get(side)
    if not wanted:
        return {}
    verdict = {key: examples >= 2 and full is not None for key, full in wanted.items()}
    names = {name for name, _, _ in wanted}
    for e in range(examples if examples >= 2 else 0):
        captured = _run_alone(model, batch.example(e), names, wanted)
        if captured is None:
            return dict.fromkeys(wanted, False)
        for key, full in wanted.items():
            if full is None:
                continue
            rows = full.shape[0] // examples
            got, part = captured.get(key), full[e * rows : (e + 1) * rows]
            if got is None or got.shape != part.shape:
                verdict[key] = False
                continue
            tolerance = max(FOLD_TOLERANCE, 8 * torch.finfo(part.dtype).eps)
            scale = part.abs().max().item() if part.numel() else 0.0
            if not torch.allclose(got.to(part.dtype), part, rtol=tolerance, atol=tolerance * scale):
                verdict[key] = False
    return verdict


def _run_alone(model: nn.Module, batch: Batch, names: set[str], wanted) -> dict | None:
    """The ``wanted`` tensors of a no-grad forward of ``batch`` (inputs at the call, outputs as returned),
    or ``None`` when that forward fails."""
    seen: dict[str, int] = defaultdict(int)
    captured: dict[tuple[str, int, str], torch.Tensor] = {}

    def pre(name):
        def hook(module, args):
            t = _first_tensor(args)
            if (name, seen[name], "input") in wanted and t is not None:
                captured[(name, seen[name], "input")] = t.detach().clone()

        return hook

    def post(name):
        def hook(module, args, out):
            if (name, seen[name], "output") in wanted and isinstance(out, torch.Tensor):
                captured[(name, seen[name], "output")] = out.detach().clone()
            seen[name] += 1

        return hook

    handles = []
    for n, m in model.named_modules():
        if n in names:
            handles += [m.register_forward_pre_hook(pre(n)), m.register_forward_hook(post(n))]
    try:
        with torch.no_grad():
            batch.call(model)
    except Exception:  # noqa: BLE001 - e.g. a model that squeezes dim 0 of a one-example batch
        return None
    finally:
        for h in handles:
            h.remove()
    return captured
