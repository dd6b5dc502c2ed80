"""torch.distributed: two CPU processes (gloo) each score half of the batches; every rank returns the
scores of the whole data, equal to one process scoring all of it. Models may be DDP-wrapped."""

import gc
import json
import sys

import models
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import rgprune_fast as rg

METHODS = list(rg.METHODS)


def score_shard(rank, world, wrap_ddp):
    model = models.make("conv_bn_relu")
    if wrap_ddp:
        model = torch.nn.parallel.DistributedDataParallel(model)
    shard = models.batches("conv_bn_relu", sizes=(3, 2, 4, 1))[rank::world]
    label = rg.score(model, shard, method=METHODS, gradient="label")
    random = rg.score(model, shard, method="taylorfo_sq", gradient="random", seed=3)
    result = {m: {k: v.tolist() for k, v in d.items()} for m, d in label.items()}
    result["random"] = {k: v.tolist() for k, v in random.items()}
    return result


def worker(rank, world, init_file, out_dir, wrap_ddp):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = score_shard(rank, world, wrap_ddp)  # the DDP wrapper is gone before the group is
        gc.collect()
        (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("wrap_ddp", [False, True], ids=["plain", "ddp"])
def test_two_ranks_equal_one_process(tmp_path, wrap_ddp):
    mp.start_processes(worker, args=(2, tmp_path / "init", tmp_path, wrap_ddp), nprocs=2, join=True,
                       start_method="spawn")  # fmt: skip
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank returns the same, whole-data scores
    single = rg.score(models.make("conv_bn_relu"), models.batches("conv_bn_relu", sizes=(3, 2, 4, 1)),
                      method=METHODS, gradient="label")  # fmt: skip
    for m in METHODS:
        for k, v in single[m].items():
            torch.testing.assert_close(torch.tensor(ranks[0][m][k]), v, rtol=1e-5, atol=1e-7)
