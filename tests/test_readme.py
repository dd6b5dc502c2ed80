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
    masks_block, _, _, physical, own = re.findall(r"```python\n(.*?)```", section, re.S)
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


def test_readme_transformer_pruning_examples_run(tmp_path, monkeypatch):
    """The per-kind masks and the transformer pruning snippets, on a tiny BERT; the saved folder
    loads back to the same outputs."""
    import models
    import torch

    import rgprune_fast as rg

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Pruning and the command line") : text.index("## Large models")]
    _, kinds_block, transformer_block, _, _ = re.findall(r"```python\n(.*?)```", section, re.S)
    model, _ = models.hf_model("bert")
    batches = [inputs for inputs, _ in models.hf_batches("bert")]
    namespace = {"rg": rg, "torch": torch, "model": model, "batches": batches, "tokenizer": None}
    namespace["masks"] = rg.pruning.masks  # imported by the first snippet of the section
    namespace["scores"] = rg.score(model, batches)
    exec(compile(kinds_block.replace('"neurons": 1000', '"neurons": 10'), "README.md", "exec"), namespace)
    pruned = {kind: 0 for kind in ("heads", "neurons")}
    for key, kind in rg.pruning.kinds_of(namespace["scores"]).items():
        pruned[kind] += int((~namespace["keep"][key]).sum())
    assert pruned == {"heads": 6, "neurons": 10}

    monkeypatch.chdir(tmp_path)
    reference = models.hf_model("bert")[0]
    inputs = batches[0]
    exec(compile(transformer_block, "README.md", "exec"), namespace)
    keep = rg.pruning.masks(namespace["scores"], ratio={"heads": 0.25, "neurons": 0.3})
    assert namespace["report"]["params_after"] < namespace["report"]["params_before"]
    with torch.no_grad(), rg.pruning.masked(reference, keep):
        expected = reference(**inputs).logits
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"](**inputs).logits, expected, rtol=1e-5, atol=1e-6)
