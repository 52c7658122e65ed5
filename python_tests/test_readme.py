"""The README: its examples run as written (at a smaller size), it opens with what a newcomer
needs, its test command is the one CI extracts, and the contract it links to is complete."""
import os
import re
import subprocess

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


def test_quick_example_runs():
    text = open(README).read()
    section = text[text.index("## Example"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "B, L, d, k = 32, 10_000, 16, 128" in code
    scope = {}
    exec(compile(code.replace("B, L, d, k = 32, 10_000, 16, 128", "B, L, d, k = 4, 300, 16, 8"), "README.md", "exec"),
         scope)
    scores, idx, lengths = scope["scores"], scope["idx"], scope["lengths"]
    assert scores.shape == idx.shape == (4, 8) and scores.dtype == torch.float32 and idx.dtype == torch.int64
    assert torch.all(idx < lengths[:, None]) and torch.all(scores[:, :-1] >= scores[:, 1:])


def test_readme_opens_with_commands_example_and_numbers():
    """What it is, the two commands (the build rule for machines without a GPU beside them),
    a short example, the headline numbers; the contract in docs/contract.md; no commit
    hashes or issue numbers before the model section."""
    text = open(README).read()
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[:4] == ["Quick start", "Example", "Measured", "Usage inside a model"]
    quick = text[text.index("## Quick start"):text.index("## Example")]
    assert "<!-- test-command -->" in quick and "DARE_BUILD_CUDA=0" in quick and "TORCH_CUDA_ARCH_LIST" in quick
    assert "a CUDA device is visible" in quick
    assert "<!-- report:begin -->" in text[text.index("## Measured"):text.index("## Usage inside a model")]
    assert "docs/contract.md" in text[:text.index("## Quick start")] and "## The op" not in text
    head = text[:text.index("## Reference model")]
    assert not re.search(r"`[0-9a-f]{7,40}`|\bissue\b|#\d+", head, re.I)


def test_ci_extracts_the_test_command():
    """.ci/run's awk finds the README's test command, as written."""
    script = open(os.path.join(os.path.dirname(README), ".ci", "run")).read()
    awk = re.search(r"cmd=\$\(awk '(.*?)' README\.md\)", script).group(1)
    cmd = subprocess.run(["awk", awk, README], capture_output=True, text=True, check=True).stdout.strip()
    assert cmd == ("python3 -m venv .venv && . .venv/bin/activate && pip install torch setuptools wheel ninja && "
                   "pip install --no-build-isolation -e '.[test]' && pytest python_tests")


def test_contract_doc_has_both_ops_and_their_backward():
    doc = open(os.path.join(os.path.dirname(README), "docs", "contract.md")).read()
    for schema in ("torch.ops.dare.topk_attention(Tensor query",
                   "torch.ops.dare.topk_attention_embedding(Tensor query",
                   "torch.ops.dare.topk_attention_backward(Tensor grad",
                   "torch.ops.dare.topk_attention_embedding_backward(Tensor grad",
                   "bool sparse=False", "sparse=True", "float8_e4m3fn", "ValueError/TypeError", "offsets"):
        assert schema in doc, schema
    ops = open(os.path.join(os.path.dirname(README), "csrc", "ops.cpp")).read()
    for name in ("topk_attention_backward", "topk_attention_embedding_backward"):
        assert f'"{name}(' in ops  # the schemas documented are the ones defined
