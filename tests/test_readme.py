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
