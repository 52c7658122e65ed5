"""The README's usage example runs as written (at a smaller size)."""
import os
import re

import torch

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_usage_example_runs():
    text = open(README).read()
    section = text[text.index("## Usage inside a model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("n_items, B, L = 100_000, 32, 10_000", "n_items, B, L = 1000, 4, 500")
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    out, att = scope["out"], scope["att_table"]
    assert out.shape == (4, 128) and torch.isfinite(out).all()
    assert att.weight.grad is not None and att.weight.grad.abs().sum() > 0
