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


def test_layout_snippet_runs():
    """The layouts snippet, with inputs of its names: each call equals the padded search."""
    import dare_kernels
    text = open(README).read()
    section = text[text.index("## Usage inside a model"):]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[1]
    g = torch.Generator().manual_seed(0)
    B, L, d, k = 3, 50, 16, 8
    n = torch.tensor([50, 9, 31])
    keys = torch.randn(B, L, d, generator=g).bfloat16()
    history = torch.where(torch.arange(L)[None, :] >= L - n[:, None], torch.randint(1, 99, (B, L), generator=g), 0)
    offsets = torch.nn.functional.pad(n.cumsum(0), (1, 0))
    values = torch.randn(int(n.sum()), d, generator=g).bfloat16()
    tables = [torch.randn(99, 8, generator=g).bfloat16() for _ in range(2)]
    scope = dict(torch=torch, dare_kernels=dare_kernels, query=torch.randn(B, d, generator=g).bfloat16(), keys=keys,
                 k=k, history=history, values=values, offsets=offsets, tables=tables, lengths=n,
                 item_values=torch.randint(99, (int(n.sum()),), generator=g),
                 cat_values=torch.randint(99, (int(n.sum()),), generator=g))
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["picked"].shape == (B, k, d)
    assert scope["idx"].shape == (B, k) and torch.all(scope["idx"] < n[:, None])
