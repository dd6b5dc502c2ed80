"""The README's usage example runs as written."""

import pathlib
import re


def test_readme_usage_example_runs(capsys):
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "{'1': (16,), '3': (32,)}" in out
    assert "least important channels of '3'" in out


def test_readme_pruning_examples_run():
    """The three snippets of "Pruning: ranking, masks, Torch-Pruning", on a ResNet-18."""
    import models
    import torch

    import rgprune_fast as rg

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Pruning and the command line") : text.index("## Large models")]
    masks_block, physical, own = re.findall(r"```python\n(.*?)```", section, re.S)
    data = models.batches("resnet18")
    for blocks in ([masks_block, physical], [masks_block, physical.split("example = ")[0], own]):
        namespace = {"rg": rg, "torch": torch, "model": models.make("resnet18"), "data": data}
        namespace["evaluate"] = lambda m: m(data[0][0]).argmax(1)
        namespace["example"] = torch.randn(1, 3, 32, 32)
        before = sum(p.numel() for p in namespace["model"].parameters())
        for block in blocks:
            block = block.replace("torch.randn(1, 3, 224, 224)", "torch.randn(1, 3, 32, 32)")  # CPU-sized
            exec(compile(block, "README.md", "exec"), namespace)
        assert sum(p.numel() for p in namespace["model"].parameters()) < before
        assert namespace["model"](torch.randn(1, 3, 32, 32)).shape == (1, 10)
