"""Stage 1 of benchmarks/gpu_session.sh: one backend against the float64 oracle, as a list of checks in
priority order, time-boxed, each result written as soon as it is known.

    PYTHONPATH=. python -m benchmarks.gpu_oracle --backend triton --device cuda --out DIR [--max-seconds 100]
    PYTHONPATH=. python -m benchmarks.gpu_oracle --backend cpp --device cpu --out DIR    # the dry run's stand-in

The checks are the test suite's own, called directly (no pytest run, so one process and its own time box):
a subset of the (backend, device) matrix of tests/test_backends.py against the float64 brute force of
tests/reference.py, then ``score`` end to end on torchvision ResNet-18 (tests/models.py, 32x32) against the
torch backend and against the float64-reduction oracle of tests/oracle.py run on the same device, and on
a tiny Llama (transformers ``LlamaConfig``, 2 layers, grouped-query attention) against the oracle; then the
rest of the subset and the backend's own extras (tests/test_triton.py, tests/test_cuda_ext.py).

TF32 is switched off: float32 convolutions on a GPU would otherwise round to 10 mantissa bits, and the
oracle's 1e-5 tolerance is that of float32.

Writes ``DIR/checks.jsonl`` (one line per check) and ``DIR/checks.md`` (the PASS/FAIL table, rewritten
after every check). Exit status: 0 all passed (or skipped, with the reason), 1 a check failed, 3 the time
box (``--max-seconds``) left checks not run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
import types
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent.parent / "tests"


class Skip(Exception):
    """A check that cannot run here, with the reason."""


class _Inert:
    """Stands in for pytest and hypothesis on a machine without them (the GPU image need not have the test
    extra): the test modules only decorate with them at import, and the functions called here use neither.
    Every attribute is another ``_Inert``; called on one function it returns the function (a decorator),
    called otherwise it returns a decorator."""

    def __getattr__(self, name):
        if name.startswith("__"):  # no made-up __file__, __wrapped__, ... for whoever inspects objects
            raise AttributeError(name)
        return _Inert()

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else _Inert()


def import_tests(*names: str) -> types.SimpleNamespace:
    """Modules of tests/ by name, imported as the tests import each other (``import reference``)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    stubs = []
    for name in ("pytest", "hypothesis"):
        try:
            importlib.import_module(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.__getattr__ = _Inert().__getattr__
            sys.modules[name] = stub
            stubs.append(name)
            print(f"({name} is not importable here: a stand-in decorates the test functions)", flush=True)
    try:
        return types.SimpleNamespace(**{name: importlib.import_module(name) for name in names})
    finally:
        for name in stubs:  # gone again: whoever looks for the real package later finds none
            del sys.modules[name]


def checks(case, device: torch.device) -> list[tuple[str, Callable[[], None]]]:
    """``(name, check)`` in priority order: the core of the matrix, the models, then the rest."""
    extras = {"triton": ["test_triton", "test_triton_load_widths"], "cuda": ["test_cuda_ext"]}.get(case.name, [])
    t = import_tests("models", "oracle", "reference", "test_backends", *extras)
    models, oracle, ref, tb = t.models, t.oracle, t.reference, t.test_backends
    import rgprune_fast as rg

    f32, bf16 = torch.float32, torch.bfloat16
    methods = list(rg.METHODS)

    def to(batch):
        x, t = batch
        x = {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)
        return x, t.to(device)

    def assert_matches(ours, expected, tol):
        for m in expected:
            assert list(ours[m]) == list(expected[m]), (m, list(ours[m]), list(expected[m]))
            for k, v in expected[m].items():
                err = ref.rel_err(ours[m][k], v)
                assert err <= tol, f"{m} {k}: relative error {err:.3g} > {tol}"

    def resnet18_vs_oracle(channels_last: bool):
        model = models.make("resnet18").to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        data = [to(b) for b in models.batches("resnet18", sizes=(2, 3), channels_last=channels_last)]
        ours = rg.score(model, data, method=methods, gradient="label", backend=case.name)
        units = models.expected_units("resnet18", model)
        assert list(ours["taylorfo"]) == units
        expected = oracle.oracle_scores(model, data, units, methods, "label", True, dtype=None)
        assert_matches(ours, expected, ref.TOLERANCE[f32])

    def llama_vs_oracle():
        if models.import_transformers() is None:
            raise Skip("transformers is not importable here")
        model, expected_units = models.hf_model("llama")
        model = model.to(device)
        batches = [to(b) for b in models.hf_batches("llama")]
        data = [{**x, "labels": t} for x, t in batches]
        ours = rg.score(model, data, method=methods, gradient="label", backend=case.name)
        assert [(k, v.numel()) for k, v in ours["taylorfo"].items()] == expected_units
        # the units of tests/test_transformers.py: 2 key/value groups of 16 channels, or neurons of one channel
        units = [rg.Unit(key.split(":")[0], "input", 32 // n if n <= 4 else 1) for key, n in expected_units]
        expected = oracle.oracle_scores(model, batches, units, methods, "label", True, dtype=None, shift=True)
        assert_matches(ours, expected, ref.TOLERANCE[f32])

    def short(dtype):
        return str(dtype).replace("torch.", "")

    def shape_name(shape):
        return "x".join(map(str, shape))

    core = []
    for dtype in (f32, bf16):
        for layout in ("nchw", "channels_last", "ntc"):
            core.append((f"channel_stats {layout} {short(dtype)} 16x256x7",
                         partial(tb.test_channel_stats, case, layout, dtype, 16, 256, 7)))  # fmt: skip
        for shape, cl in (((4, 300, 9, 7), True), ((2, 5, 7, 3), False)):
            core.append((f"batchnorm_stats {shape_name(shape)}{' cl' if cl else ''} {short(dtype)}",
                         partial(tb.test_batchnorm_stats, case, shape, dtype, cl)))  # fmt: skip
        upper = None if dtype == f32 else 6.0
        for layout in ("nchw", "channels_last", "ntc"):
            core.append((f"relu_stats {layout} {short(dtype)} upper={upper}",
                         partial(tb.test_relu_stats, case, layout, dtype, upper)))  # fmt: skip
    all_sums = ("s", "abs", "sq", "batch_sq")
    core.append(("fold_criteria float32 all sums", partial(tb.test_fold_criteria, case, f32, all_sums)))

    widths = []  # the wide-load designs (row groups, alignment declarations, CUDA pieces): after the models
    if case.name == "triton":
        from rgprune_fast.backends.triton import common

        load_widths = t.test_triton_load_widths

        def poisoned(fn, *args):
            common.POISON_OUTPUTS = True  # the tests' fixture: an element a kernel forgets to write is NaN
            try:
                fn(None, *args)
            finally:
                common.POISON_OUTPUTS = False

        for shape, dtype in load_widths.ROW_GROUP_CASES[:5]:
            widths.append((f"triton: row groups {shape_name(shape)} {short(dtype)}",
                         partial(poisoned, load_widths.test_row_groups_match_the_reference, shape, dtype)))  # fmt: skip
        for tiled in list(load_widths.tiled_cases())[:3]:
            widths.append((f"triton: tiled alignment, {tiled[0]}",
                         partial(poisoned, load_widths.test_tiled_alignment_declarations, tiled)))  # fmt: skip
    if case.name == "cuda":
        for cl in (False, True):
            widths.append((f"cuda: 16/8/4/2-byte aligned rows agree bit for bit, bfloat16{' cl' if cl else ''}",
                         partial(t.test_cuda_ext.test_load_widths_agree_bit_for_bit, torch.bfloat16, cl)))  # fmt: skip

    agrees = tb.test_score_agrees_with_the_torch_backend
    model_checks = [
        ("score resnet18 vs torch backend", partial(agrees, case, "resnet18")),
        ("score resnet18 vs float64 oracle", partial(resnet18_vs_oracle, False)),
        ("score tiny llama vs float64 oracle", llama_vs_oracle),
        ("score resnet18 channels_last vs float64 oracle", partial(resnet18_vs_oracle, True)),
        ("score conv_bn_relu vs torch backend", partial(agrees, case, "conv_bn_relu")),
    ]

    rest = []
    for n, c, p in ((1, 1, 1), (3, 3, 4099), (2, 3, 20001), (2, 5, 7)):
        for layout in ("nchw", "strided", "transposed_ntc"):
            rest.append((f"channel_stats {layout} float32 {n}x{c}x{p}",
                         partial(tb.test_channel_stats, case, layout, f32, n, c, p)))  # fmt: skip
    for dtype in (torch.float16, torch.float64):
        rest += [
            (f"channel_stats nchw {short(dtype)} 2x5x7", partial(tb.test_channel_stats, case, "nchw", dtype, 2, 5, 7)),
            (
                f"batchnorm_stats 2x5x7x3 {short(dtype)}",
                partial(tb.test_batchnorm_stats, case, (2, 5, 7, 3), dtype, False),
            ),
        ]
    rest += [
        ("batchnorm_stats 3x3x4099 float32", partial(tb.test_batchnorm_stats, case, (3, 3, 4099), f32, False)),
        ("batchnorm_stats 1x1x1x1 cl bfloat16", partial(tb.test_batchnorm_stats, case, (1, 1, 1, 1), bf16, True)),
        ("relu_stats strided float32 upper=6.0", partial(tb.test_relu_stats, case, "strided", f32, 6.0)),
        ("relu_stats nc bfloat16 upper=None", partial(tb.test_relu_stats, case, "nc", bf16, None)),
        ("fold_criteria float64 sum only", partial(tb.test_fold_criteria, case, torch.float64, ("s",))),
        ("inputs not written, outputs fresh", partial(tb.test_inputs_not_written_and_outputs_fresh, case)),
        ("expanded gradient", partial(tb.test_expanded_gradient, case)),
        ("empty positions", partial(tb.test_empty_positions, case)),
        ("deterministic channels_last bfloat16", partial(tb.test_deterministic, case, True, bf16)),
        ("deterministic nchw float32", partial(tb.test_deterministic, case, False, f32)),
    ]
    if case.name == "triton":
        from rgprune_fast.backends.triton import common

        test_triton = t.test_triton

        def position_splits(split, channels_last):
            common.POISON_OUTPUTS = True  # the test's fixture: an element a kernel forgets to write is NaN
            try:
                test_triton.test_position_splits_agree(None, split, channels_last)
            finally:
                common.POISON_OUTPUTS = False

        rest += [
            ("triton: position splits 5, channels_last", partial(position_splits, 5, True)),
            ("triton: position splits 2, nchw", partial(position_splits, 2, False)),
            ("triton: split is a fixed-order sum", test_triton.test_split_is_a_fixed_order_sum_of_chunks),
        ]
    if case.name == "cuda":
        test_cuda_ext = t.test_cuda_ext
        rest += [
            ("cuda: opcheck of the extension's ops", test_cuda_ext.test_opcheck_cuda),
            ("cuda: agrees with triton, channels_last bf16", partial(test_cuda_ext.test_agrees_with_triton, True)),
        ]
    return core + model_checks + widths + rest


# Under the Triton interpreter (the dry run) these take seconds each and add no code path the others miss.
HEAVY = {
    "score resnet18 vs torch backend",
    "score resnet18 channels_last vs float64 oracle",
    "deterministic channels_last bfloat16",
    "deterministic nchw float32",
}


class Report:
    """checks.jsonl and checks.md, rewritten after every check (a killed run keeps what it did)."""

    def __init__(self, out: Path, title: str):
        self.out, self.title, self.rows = out, title, []
        out.mkdir(parents=True, exist_ok=True)
        (out / "checks.jsonl").write_text("")

    def add(self, name: str, result: str, seconds: float, detail: str = "") -> None:
        row = {"check": name, "result": result, "seconds": round(seconds, 2), "detail": detail}
        self.rows.append(row)
        with open(self.out / "checks.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self.write()

    def counts(self) -> dict:
        out = {}
        for r in self.rows:
            out[r["result"]] = out.get(r["result"], 0) + 1
        return out

    def write(self, final: bool = False) -> None:
        counts = self.counts()
        verdict = "FAIL" if counts.get("FAIL") else ("INCOMPLETE" if counts.get("NOT RUN") or not final else "PASS")
        lines = [f"# {self.title}", "", f"**{verdict}**: " + ", ".join(f"{v} {k}" for k, v in counts.items()), "",
                 "| check | result | s | detail |", "|---|---|---|---|"]  # fmt: skip
        for r in self.rows:
            detail = r["detail"].replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {r['check']} | {r['result']} | {r['seconds']:.2f} | {detail} |")
        (self.out / "checks.md").write_text("\n".join(lines) + "\n")


def run_checks(todo, report: Report, max_seconds: float) -> int:
    started = time.monotonic()
    for i, (name, fn) in enumerate(todo):
        if time.monotonic() - started > max_seconds:
            for rest, _ in todo[i:]:
                report.add(rest, "NOT RUN", 0.0, f"past the time box of {max_seconds:.0f} s")
            break
        torch.manual_seed(0)  # as tests/conftest.py does before every test
        t0 = time.monotonic()
        try:
            fn()
            result, detail = "PASS", ""
        except Skip as e:
            result, detail = "SKIP", str(e)
        except Exception as e:  # noqa: BLE001 - every failure is a result to report, then the next check
            where = traceback.extract_tb(e.__traceback__)[-1]
            result, detail = "FAIL", f"{type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})"
        except BaseException as e:  # pytest.skip() inside a test function raises a BaseException
            if type(e).__name__ != "Skipped":
                raise
            result, detail = "SKIP", str(e)
        report.add(name, result, time.monotonic() - t0, detail)
        print(f"  {result:4} {name} ({time.monotonic() - t0:.1f} s){': ' + detail[:200] if detail else ''}", flush=True)
    report.write(final=True)
    counts = report.counts()
    return 1 if counts.get("FAIL") else (3 if counts.get("NOT RUN") else 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", required=True, choices=["triton", "cuda", "cpp", "torch"])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--max-seconds", type=float, default=100.0, help="start no check after this long")
    ap.add_argument("--quick", action="store_true", help="leave out the checks in HEAVY (the dry run)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and args.backend == "triton":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is defined
    # score() puts kernels behind the first-use self-check, which would serve a failing case with the torch
    # backend (and pass the oracle): here a failed self-check is a failed check.
    from rgprune_fast.errors import KernelSelfCheckWarning

    warnings.simplefilter("error", KernelSelfCheckWarning)
    torch.backends.cudnn.allow_tf32 = False  # float32 means float32 here (see the module docstring)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True  # the oracle's convolutions round as score()'s do
    if device.type == "cuda" and not torch.cuda.is_available():
        Report(args.out, f"{args.backend} on {device}").add("find the device", "FAIL", 0.0, "torch sees no CUDA device")
        print("torch sees no CUDA device", flush=True)
        return 1
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = Report(args.out, f"{args.backend} on {device} ({where}) against the float64 oracle")
    started = time.monotonic()
    from rgprune_fast.backends import why_unavailable

    reason = why_unavailable(args.backend, device)
    if reason is not None:
        report.add("load the backend", "FAIL", 0.0, reason)
        report.write(final=True)
        print(f"backend {args.backend} cannot run on {device}: {reason}", flush=True)
        return 1
    case = import_tests("matrix").matrix.load_case((args.backend, args.device))
    todo = [(name, fn) for name, fn in checks(case, device) if not (args.quick and name in HEAVY)]
    print(f"{len(todo)} checks of {args.backend} on {device} ({where})", flush=True)
    status = run_checks(todo, report, args.max_seconds - (time.monotonic() - started))
    counts = report.counts()
    print(f"{args.backend} on {device}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f" in {time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
    return status


if __name__ == "__main__":
    sys.exit(main())
