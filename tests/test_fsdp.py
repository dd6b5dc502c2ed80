"""FSDP2 (``fully_shard`` per layer and on the root): two CPU processes (gloo) each score their half of
the batches of a sharded model; every rank returns the scores of the whole data, equal to one process
scoring all of it with the plain model (float64: 1e-10, float32: 1e-5 relative), and the model is left
exactly as found (DTensor parameters, no hooks, flags). Ranks with different numbers of batches raise
on every rank instead of waiting for ever in the next all-gather; ``molchanov_group`` is refused.

Also: a Hugging Face model dispatched with accelerate's hooks (``device_map``) scores like the plain one.
One spawn runs every distributed case (spawning and importing transformers is most of the time)."""

import datetime
import json
import sys
import traceback
from pathlib import Path

import models
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import untouched

import rgprune_fast as rg

METHODS = [m for m in rg.METHODS if m != "molchanov_group"]  # molchanov_group needs whole weights
CONV_SIZES, LLAMA_SIZES = (3, 2, 4, 1), (3, 2, 4, 2)
CASES = [("conv", torch.float64), ("llama", torch.float64), ("llama", torch.float32)]


def build(kind, dtype, shard):
    """The model and its whole data; ``shard``: ``fully_shard`` on every layer, then on the root."""
    if kind == "llama":
        model, _ = models.hf_model("llama")
        data = models.hf_batches("llama", sizes=LLAMA_SIZES)
        layers = list(model.model.layers)
    else:
        model = models.make("conv_bn_relu")
        data = models.batches("conv_bn_relu", sizes=CONV_SIZES)
        data = [(x.to(dtype), t) for x, t in data]
        layers = [m for m in model if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear))]
    model = model.to(dtype)
    if shard:
        from torch.distributed.fsdp import fully_shard

        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
    return model, data


def all_dtensors(model):
    from torch.distributed.tensor import DTensor

    return all(isinstance(p, DTensor) for p in model.parameters())


def expect_error(model, data, error, match, **kwargs):
    """``rg.score`` raises ``error`` (message containing ``match``) and leaves the model as found."""
    before = untouched.snapshot(model)
    with pytest.raises(error, match=match):
        rg.score(model, data, **{"gradient": "label", **kwargs})
    untouched.assert_same(before, untouched.snapshot(model))
    assert all_dtensors(model)


def no_gradient(output, batch):
    raise ValueError("no gradient today")


def run_rank(rank, world):
    result = {}
    for kind, dtype in CASES:
        model, data = build(kind, dtype, shard=True)
        before = untouched.snapshot(model)
        scores = rg.score(model, data[rank::world], method=METHODS, gradient="label")
        untouched.assert_same(before, untouched.snapshot(model))
        assert all_dtensors(model)  # resharded: as found
        result[f"{kind}-{dtype}"] = {m: {k: v.tolist() for k, v in d.items()} for m, d in scores.items()}
    model, data = build("conv", torch.float64, shard=True)
    expect_error(model, data, rg.UnsupportedModuleError, "DTensor shard", method="molchanov_group")
    uneven = data[:2] if rank == 0 else data[2:3]  # 2 batches against 1: raises on both ranks
    expect_error(model, uneven, RuntimeError, "same number of batches")
    # still usable afterwards: the ranks are in step again
    result["after errors"] = rg.score(model, data[rank::world], method="taylorfo", gradient="label")["1"].tolist()
    # raised between forward and backward: FSDP2 keeps the root's weights gathered until its backward
    model, data = build("llama", torch.float32, shard=True)
    expect_error(model, data[rank::world], ValueError, "no gradient", gradient=no_gradient)
    return result


def worker(rank, world, init_file, out_dir):
    sys.path.insert(0, str(Path(__file__).parent))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))  # fmt: skip  # a hang fails, not waits 30 min
    try:
        result = run_rank(rank, world)
    except BaseException:
        (out_dir / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))


def test_fsdp_two_ranks_equal_one_process(tmp_path):
    try:
        mp.start_processes(worker, args=(2, tmp_path / "init", tmp_path), nprocs=2, join=True, start_method="spawn")
    except mp.ProcessRaisedException:
        errors = "\n".join(p.read_text() for p in sorted(tmp_path.glob("rank*.err")))
        pytest.fail(f"a rank failed:\n{errors}")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank returns the same, whole-data scores
    for kind, dtype in CASES:
        model, data = build(kind, dtype, shard=False)
        single = rg.score(model, data, method=METHODS, gradient="label")
        rtol = 1e-10 if dtype == torch.float64 else 1e-5
        for m in METHODS:
            for k, v in single[m].items():
                got = torch.tensor(ranks[0][f"{kind}-{dtype}"][m][k], dtype=v.dtype)
                torch.testing.assert_close(got, v, rtol=rtol, atol=rtol * v.abs().max().item(), msg=f"{kind} {m} {k}")
    model, data = build("conv", torch.float64, shard=False)
    single = rg.score(model, data, method="taylorfo", gradient="label")["1"]
    torch.testing.assert_close(torch.tensor(ranks[0]["after errors"], dtype=torch.float64), single, rtol=1e-10, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_accelerate_dispatched_llama_scores_like_plain(dtype):
    """``device_map`` splits: accelerate's ``dispatch_model`` puts an ``AlignDevicesHook`` on every block
    (``force_hooks``: on CPU there is one device, the hooks are those of a split over several)."""
    accelerate = pytest.importorskip("accelerate")
    model, _ = models.hf_model("llama")
    model = model.to(dtype)
    data = models.hf_batches("llama", sizes=LLAMA_SIZES)
    plain = rg.score(model, data, method=list(rg.METHODS), gradient="label")
    blocks = ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "model.rotary_emb", "lm_head"]
    accelerate.dispatch_model(model, device_map=dict.fromkeys(blocks, "cpu"), force_hooks=True)
    assert all(hasattr(model.get_submodule(b), "_hf_hook") for b in blocks)
    before = untouched.snapshot(model)
    dispatched = rg.score(model, data, method=list(rg.METHODS), gradient="label")
    untouched.assert_same(before, untouched.snapshot(model))
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    for m in rg.METHODS:
        for k, v in plain[m].items():
            torch.testing.assert_close(dispatched[m][k], v, rtol=rtol, atol=rtol * v.abs().max().item())
