"""The README's usage example runs as written (at a smaller size)."""
import os
import re

import torch

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_usage_example_runs():
    text = open(README).read()
    section = text[text.index("## Usage inside a model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "B, L = 32, 10_000" in code
    code = code.replace("B, L = 32, 10_000", "B, L = 4, 500")
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    out, layer = scope["out"], scope["layer"]
    assert out.shape == (4, 128) and torch.isfinite(out).all()
    for table in layer.att:
        assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0
    assert layer.rep.weight.grad.abs().sum() > 0
