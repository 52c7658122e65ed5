"""Hand-written search + attention blocks vs the drop-in layers (dare_kernels.layers), CPU.

    PYTHONPATH=. python bench/tools/layers_time.py [--B 64 --L 4000 --d 16 --threads 1]

Prints, per block, mask layout and pass (forward, forward + backward), the best and
the median of --repeat timed calls, hand-written / layer. The best is the figure
to read on a shared machine (the median swings with other load)."""
import argparse
import re
import time

import torch

from dare_kernels import layers
from dare_kernels.layers import HardSearch, TopKMultiHeadAttention


def twin_block(mh: TopKMultiHeadAttention, query, keys, values, mask):
    """The usual multi-head top-k block with mh's parameters: project every key
    and every value per head, score, mask, top-k, gather, softmax."""
    H, e, k = mh.num_heads, mh.d_head, mh.k
    B, L, _ = keys.shape
    qh = mh.q_proj(query).view(B, H, e)
    kh = (keys @ mh.key_weight.permute(2, 0, 1).reshape(-1, H * e)).view(B, L, H, e)  # every key, every head
    s = torch.einsum("bhe,blhe->bhl", qh, kh) * mh.search.scale
    top, idx = s.masked_fill(~mask[:, None], float("-inf")).topk(k, -1)
    vh = (values @ mh.value_weight.permute(1, 0, 2).reshape(-1, H * e)).view(B, L, H, e) + mh.value_bias
    picked = vh.transpose(1, 2).gather(2, idx[..., None].expand(-1, -1, -1, e))
    o = (torch.softmax(top, -1)[..., None] * picked).sum(2)
    return mh.out_proj(o.reshape(o.shape[0], -1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=64)
    p.add_argument("--L", type=int, default=4000)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--dv", type=int, default=64)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    scope = {}
    exec(re.search(r"```python\n(.*?)\n\n\nB, L", layers.__doc__, re.S).group(1), scope)
    sim_block = scope["sim_block"]  # the module docstring's hand-written block
    g = torch.Generator().manual_seed(0)
    B, L, d, dv, k = a.B, a.L, a.d, a.dv, a.k
    n = torch.randint(1, L + 1, (B,), generator=g)
    pos = torch.arange(L)
    masks = {"right": pos < n[:, None], "left": pos >= (L - n)[:, None]}
    q = torch.randn(B, d, generator=g, requires_grad=True)
    keys = torch.randn(B, L, d, generator=g, requires_grad=True)
    vals = torch.randn(B, L, dv, generator=g, requires_grad=True)
    hs, mh = HardSearch(k), TopKMultiHeadAttention(k, d, d, a.heads, d_value=dv)

    def timed(f, backward):
        ts = []
        for _ in range(a.repeat + 2):
            t = time.perf_counter()
            out = f()
            if backward:
                out.sum().backward()
            ts.append(time.perf_counter() - t)
        ts = sorted(ts[2:])
        return ts[0] * 1e3, ts[len(ts) // 2] * 1e3

    print(f"CPU, {torch.get_num_threads()} threads; B={B} L={L} d={d} d_v={dv} k={k} heads={a.heads}; "
          f"ms over {a.repeat} calls, hand-written / layer")
    for name, m in masks.items():
        for bw in (False, True):
            pairs = [("HardSearch", lambda: sim_block(q, keys, vals, m, k), lambda: hs(q, keys, vals, mask=m)[0]),
                     ("TopKMultiHeadAttention", lambda: twin_block(mh, q, keys, vals, m),
                      lambda: mh(q, keys, vals, mask=m)[0])]
            for label, ref, new in pairs:
                with torch.set_grad_enabled(bw):
                    (b0, m0), (b1, m1) = timed(ref, bw), timed(new, bw)
                print(f"{label:22s} {name:5s}-padded {'fwd+bwd' if bw else 'fwd    '}: "
                      f"best {b0:8.2f} / {b1:7.2f} = {b0 / b1:5.2f}x   median {m0:8.2f} / {m1:7.2f} = {m0 / m1:5.2f}x")


if __name__ == "__main__":
    main()
