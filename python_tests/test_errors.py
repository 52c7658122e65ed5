"""Every bad input raises a clear exception naming the argument and the expected
value, identically through the Python API (each backend) and the raw op."""
import os
import re

import numpy as np
import pytest
import torch

import dare_kernels
from dare_kernels.ops import backend_status

from conftest import DEVICES, compiled_unavailable, skip_unless_compiled

B, L, d = 4, 10, 5


def _entry_points(device):
    points = [f"api-{b}" for b in dare_kernels.BACKENDS if backend_status(b, device) is None]
    if compiled_unavailable(device) is None:
        points.append("raw")
    return points


def _call(entry, query, keys, k, lengths=None, scale=1.0, mask=None, offsets=None):
    if entry == "raw":
        return torch.ops.dare.topk_attention(query, keys, k, lengths, scale, mask, offsets)
    return dare_kernels.topk_attention(query, keys, k, lengths=lengths, scale=scale, mask=mask, offsets=offsets,
                                       backend=entry[4:])


def _ok(device, dtype=torch.float32):
    return torch.randn(B, d, dtype=dtype, device=device), torch.randn(B, L, d, dtype=dtype, device=device)


def _cases(device):
    q, K = _ok(device)
    lens = lambda *v, dtype=torch.int64: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
    cases = {
        "keys_2d": ((q, K[:, :, 0], 3), ValueError, r"keys must have shape \(B, L, d\), got shape \[4, 10\]"),
        "query_1d": ((q[0], K, 3), ValueError, r"query must have shape \(B, d\) or \(B, T, d\), got shape \[5\]"),
        "query_4d": ((q[:, None, None], K, 3), ValueError, r"query must have shape \(B, d\) or \(B, T, d\), got shape \[4, 1, 1, 5\]"),
        "keys_int": ((q, K.long(), 3), TypeError, r"keys must be float32, float16, bfloat16 or float8_e4m3fn, got torch.int64"),
        "keys_float64": ((q.double(), K.double(), 3), TypeError, r"keys must be float32, float16, bfloat16 or float8_e4m3fn, got torch.float64"),
        "query_dtype": ((q.half(), K, 3), TypeError, r"query dtype must equal keys dtype torch.float32, got torch.float16"),
        "query_fp8": ((q.to(torch.float8_e4m3fn), K.to(torch.float8_e4m3fn), 3), TypeError,
                      r"with float8_e4m3fn keys, query must be float32, float16 or bfloat16, got torch.float8_e4m3fn"),
        "query_batch": ((q[:3], K, 3), ValueError, r"query batch size must equal keys batch size B=4, got 3"),
        "query_features": ((torch.randn(B, 2, d + 1, device=device), K, 3), ValueError,
                           r"query feature size must equal keys feature size d=5, got 6"),
        "d_zero": ((q[:, :0], K[:, :, :0], 3), ValueError, r"keys feature size d must be >= 1, got 0"),
        "k_zero": ((q, K, 0), ValueError, r"k must satisfy 1 <= k <= L=10, got 0"),
        "k_negative": ((q, K, -2), ValueError, r"k must satisfy 1 <= k <= L=10, got -2"),
        "k_above_L": ((q, K, L + 1), ValueError, r"k must satisfy 1 <= k <= L=10, got 11"),
        "lengths_float": ((q, K, 3, lens(1, 2, 3, 4).float()), TypeError, r"lengths must be int32 or int64, got torch.float32"),
        "lengths_2d": ((q, K, 3, lens(1, 2, 3, 4)[:, None]), ValueError, r"lengths must have shape \(B,\)=\(4,\), got shape \[4, 1\]"),
        "lengths_long": ((q, K, 3, lens(1, 2, 3, 4, 5)), ValueError, r"lengths must have shape \(B,\)=\(4,\), got shape \[5\]"),
    }
    m = torch.ones(B, L, dtype=torch.bool, device=device)
    off = lens(0, 3, 3, 7, 10)
    cases.update({
        "mask_int": ((q, K, 3, None, 1.0, m.int()), TypeError, r"mask must be torch.bool \(True = takes part, e.g. ids != 0\), got torch.int32"),
        "mask_shape": ((q, K, 3, None, 1.0, m[:, :4]), ValueError,
                       r"mask must have shape \(B, L\)=\(4, 10\), got shape \[4, 4\]"),
        "offsets_keys_3d": ((q, K, 3, None, 1.0, None, off), ValueError,
                            r"with offsets, keys must have shape \(N, d\), got shape \[4, 10, 5\]"),
        "offsets_float": ((q, K[0], 3, None, 1.0, None, off.float()), TypeError,
                          r"offsets must be int32 or int64, got torch.float32"),
        "offsets_shape": ((q, K[0], 3, None, 1.0, None, off[:4]), ValueError,
                          r"offsets must have shape \(B\+1,\)=\(5,\), got shape \[4\]"),
        "offsets_with_lengths": ((q, K[0], 3, lens(1, 2, 3, 4), 1.0, None, off), ValueError,
                                 r"lengths must be None with offsets"),
        "offsets_with_mask": ((q, K[0], 3, None, 1.0, m, off), ValueError, r"mask must be None with offsets"),
        "offsets_k_zero": ((q, K[0], 0, None, 1.0, None, off), ValueError, r"k must satisfy 1 <= k < 2\*\*31, got 0"),
        "offsets_k_2_31": ((q, K[0], 2**31, None, 1.0, None, off), ValueError,
                           r"k must satisfy 1 <= k < 2\*\*31, got 2147483648"),
    })
    if device == "cpu":
        cases["offsets_decreasing"] = ((q, K[0], 3, None, 1.0, None, lens(0, 3, 2, 7, 10)), ValueError,
                                       r"offsets must be nondecreasing from offsets\[0\] >= 0 to offsets\[B\] <= "
                                       r"N=10, got \[0, 3, 2, 7, 10\]")
        cases["offsets_past_N"] = ((q, K[0], 3, None, 1.0, None, lens(0, 3, 3, 7, 11)), ValueError,
                                   r"offsets must be nondecreasing .* <= N=10, got \[0, 3, 3, 7, 11\]")
    for name, v, shown in (("scale_inf", float("inf"), "inf"), ("scale_nan", float("nan"), "nan"),
                           ("scale_1e39", 1e39, "1e+39"), ("scale_neg_4e38", -4e38, "-4e+38")):
        cases[name] = ((q, K, 3, None, v), ValueError, r"scale must be finite in float32, got " + re.escape(shown))
    if device == "cpu":
        cases["lengths_negative"] = ((q, K, 3, lens(1, -1, 3, 4)), ValueError,
                                     r"lengths values must be in \[0, L=10\], got min -1, max 4")
        cases["lengths_above_L"] = ((q, K, 3, lens(1, 11, 3, 4, dtype=torch.int32)), ValueError,
                                    r"lengths values must be in \[0, L=10\], got min 1, max 11")
    if torch.cuda.is_available():
        other = "cpu" if device != "cpu" else "cuda"
        cases["query_device"] = ((q.to(other), K, 3), ValueError,
                                 rf"query must be on the keys device {re.escape(str(K.device))}, got {other}")
        cases["lengths_device"] = ((q, K, 3, lens(1, 2, 3, 4).to(other)), ValueError,
                                   rf"lengths must be on the keys device {re.escape(str(K.device))}, got {other}")
        cases["mask_device"] = ((q, K, 3, None, 1.0, m.to(other)), ValueError,
                                rf"mask must be on the keys device {re.escape(str(K.device))}, got {other}")
        cases["offsets_device"] = ((q, K[0], 3, None, 1.0, None, off.to(other)), ValueError,
                                   rf"offsets must be on the keys device {re.escape(str(K.device))}, got {other}")
    return cases


def _all(device):
    return [(device, entry, case) for entry in _entry_points(device) for case in _cases(device)]


@pytest.mark.parametrize("device,entry,case", [p for dev in DEVICES for p in _all(dev)])
def test_bad_input(device, entry, case):
    args, exc, pattern = _cases(device)[case]
    with pytest.raises(exc, match="topk_attention: " + pattern):
        _call(entry, *args)


def _type_cases(device):
    """Arguments of the wrong Python type. The Python API raises TypeError for each,
    on every backend; the raw op cannot (test_raw_op_converts_arguments)."""
    q, K = _ok(device)
    lens = torch.tensor([1, 2, 3, 4], device=device)
    return {
        "k_bool": ((q, K, True), r"k must be an int, got bool"),
        "k_numpy_bool": ((q, K, np.True_), r"k must be an int, got bool"),
        "k_numpy_float": ((q, K, np.float64(3.0)), r"k must be an int, got float64"),
        "k_float": ((q, K, 3.0), r"k must be an int, got float"),
        "k_float_tensor": ((q, K, torch.tensor(3.7)), r"k must be an int, got Tensor"),
        "k_int_tensor": ((q, K, torch.tensor(3)), r"k must be an int, got Tensor"),
        "k_none": ((q, K, None), r"k must be an int, got NoneType"),
        "lengths_list": ((q, K, 3, [1, 2, 3, 4]), r"lengths must be a Tensor or None, got list"),
        "lengths_int": ((q, K, 3, 4), r"lengths must be a Tensor or None, got int"),
        "scale_tensor": ((q, K, 3, lens, torch.tensor(0.5)), r"scale must be a float, got Tensor"),
        "scale_bool": ((q, K, 3, None, True), r"scale must be a float, got bool"),
        "scale_none": ((q, K, 3, None, None), r"scale must be a float, got NoneType"),
        "scale_str": ((q, K, 3, None, "0.5"), r"scale must be a float, got str"),
    }


@pytest.mark.parametrize("device,entry,case", [(dev, e, c) for dev in DEVICES for e in _entry_points(dev)
                                               if e != "raw" for c in _type_cases(dev)])
def test_bad_argument_type(device, entry, case):
    args, pattern = _type_cases(device)[case]
    with pytest.raises(TypeError, match="topk_attention: " + pattern):
        _call(entry, *args)


@pytest.mark.parametrize("device", DEVICES)
def test_raw_op_converts_arguments(device):
    """What the raw op's schema (int k, Tensor? lengths, float scale) does to
    Python arguments before any kernel code runs, so the kernels cannot reject
    them (documented in docs/contract.md): a bool or one-element tensor k becomes an int
    (truncated), a bool or tensor scale a float; None, float k and list lengths
    raise the dispatcher's RuntimeError, not TypeError."""
    skip_unless_compiled(device)
    q, K = _ok(device)
    op = torch.ops.dare.topk_attention
    assert op(q, K, True)[1].shape == (B, 1)
    assert op(q, K, torch.tensor(3.7))[1].shape == (B, 3)
    assert torch.equal(op(q, K, 3, None, True)[0], op(q, K, 3, None, 1.0)[0])
    for args in ((q, K, None), (q, K, 3.0), (q, K, 3, [1, 2, 3, 4])):
        with pytest.raises(RuntimeError, match=r"dare::topk_attention\(\) Expected a value of type"):
            op(*args)


@pytest.mark.parametrize("device", DEVICES)
def test_unknown_backend(device):
    q, K = _ok(device)
    with pytest.raises(ValueError, match=r"backend must be one of None, 'auto', 'cpu', 'cuda', 'triton', 'reference', got 'fast'"):
        dare_kernels.topk_attention(q, K, 3, backend="fast")


@pytest.mark.parametrize("device", DEVICES)
def test_unavailable_backend(device):
    q, K = _ok(device)
    other = "cuda" if device == "cpu" else "cpu"
    with pytest.raises(RuntimeError, match=rf"backend '{other}' is not available: .*"):
        dare_kernels.topk_attention(q, K, 3, backend=other)


@pytest.mark.parametrize("device", DEVICES)
def test_k_not_int(device):
    q, K = _ok(device)
    with pytest.raises(TypeError, match=r"k must be an int, got float"):
        dare_kernels.topk_attention(q, K, 2.5, backend="reference")


@pytest.mark.parametrize("device,entry", [(dev, e) for dev in DEVICES for e in _entry_points(dev) if e != "raw"])
def test_integer_like_k(device, entry):
    """k may be any integer-like object but bool, as torch.topk's (operator.index:
    numpy.int64, ...), with padded and jagged rows (bool, numpy's too, and numpy
    floats are refused: _type_cases)."""
    q, K = _ok(device)
    off = torch.tensor([0, 3, 3, 7, 10], device=device)
    for k in (np.int64(3), np.int32(3), np.uint8(3)):
        for args in ((q, K), (q, K[0], None, 1.0, None, off)):
            want = _call(entry, *args[:2], 3, *args[2:])
            got = _call(entry, *args[:2], k, *args[2:])
            assert got[0].shape == want[0].shape == (B, 3)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_jagged_k_cap_documented():
    """The jagged form's cap on k (offsets_k_2_31) is in the contract and the docstring."""
    assert "with offsets 1 <= k < 2**31" in dare_kernels.topk_attention.__doc__
    contract = open(os.path.join(os.path.dirname(__file__), "..", "docs", "contract.md")).read()
    contract_k = re.search(r"^- `k`:.*?(?=^- )", contract, re.S | re.M).group(0)
    assert "numpy.int64" in contract_k and "jagged rows: any 1 ≤ k < 2³¹" in contract_k


@pytest.mark.parametrize("device", DEVICES)
def test_transposed_keys_hint(device):
    """Keys (B, d, L) where (B, L, d) was meant, or (d, N) for jagged (N, d): the
    feature-size error says they look transposed, through the Python API on every
    backend (the raw op's message, csrc/check.cpp's, has no hint); another width has none."""
    q, K = torch.randn(B, 7, device=device), torch.randn(B, L, 7, device=device)
    off = torch.tensor([0, 3, 3, 7, 10], device=device)
    feature = r"topk_attention: query feature size must equal keys feature size d=10, got 7"
    for entry in _entry_points(device):
        hint = "" if entry == "raw" else r" \(keys look transposed: expected \({}\)\)"
        with pytest.raises(ValueError, match=feature + hint.format("B, L, d") + "$"):
            _call(entry, q, K.transpose(1, 2), 3)
        with pytest.raises(ValueError, match=feature + hint.format("N, d") + "$"):
            _call(entry, q, K[0].T, 3, None, 1.0, None, off)
        with pytest.raises(ValueError, match=r"keys feature size d=6, got 7$"):
            _call(entry, q, K[:, :, :6], 3)


def test_non_tensor_keys():
    with pytest.raises(TypeError, match=r"keys must be a Tensor, got list"):
        dare_kernels.topk_attention(torch.randn(B, d), [[0.0]], 3)


def test_library_built_for_another_torch_is_refused():
    from dare_kernels import _library
    msg = _library.build_mismatch({"torch": "2.9.0+cu128"}, "2.14.1+cu130")
    assert "built for torch 2.9.0+cu128 but torch 2.14.1+cu130 is running" in msg
    assert "pip install --no-build-isolation --no-deps -e ." in msg
    assert _library.build_mismatch({"torch": "2.14.1+cu130"}, "2.14.1+cu130") is None
    assert _library.build_mismatch(None, "2.14.1+cu130") is None


def test_python_backends_work_without_the_library(monkeypatch):
    from dare_kernels import _library
    monkeypatch.setattr(_library, "loaded", False)
    monkeypatch.setattr(_library, "error", "dare_kernels._C is not built (test)")
    assert dare_kernels.available_backends("cpu") == ["reference"]
    q, K = _ok("cpu")
    scores, idx = dare_kernels.topk_attention(q, K, 3)  # auto falls back to the reference
    assert scores.shape == (B, 3)
    with pytest.raises(RuntimeError, match=r"backend 'cpu' is not available: dare_kernels._C is not built \(test\)"):
        dare_kernels.topk_attention(q, K, 3, backend="cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_backward_ops_check_the_selection(device):
    """Both backward ops (raw: autograd calls them with the forward's own outputs)
    name a bad indices or grad before any kernel runs."""
    skip_unless_compiled(device)
    q, K = _ok(device)
    tables, ids = [K.reshape(-1, d)], [torch.arange(B * L, device=device).reshape(B, L)]
    idx = torch.zeros(B, 3, dtype=torch.int64, device=device)
    g = torch.ones(B, 3, device=device)
    calls = {"keys": lambda grad, i: torch.ops.dare.topk_attention_backward(grad, q, K, i),
             "ids": lambda grad, i: torch.ops.dare.topk_attention_embedding_backward(grad, q, tables, ids, i)}
    for op, call in calls.items():
        with pytest.raises(ValueError, match=r"indices must be int64 of shape \(B, k\) or \(B, T, k\) as the "
                                             r"query's \(B, \[T,\] d\) \[4, 5\], got \[3, 3\] torch.int64"):
            call(g[:3], idx[:3])
        with pytest.raises(ValueError, match=r"got \[4, 3\] torch.int32"):
            call(g, idx.int())
        with pytest.raises(ValueError, match=r"grad must have indices' shape \[4, 3\], got \[4, 2\]"):
            call(g[:, :2], idx)
