"""One shape of the CUDA embedding kernel, for ncu:
  ncu -k regex:embedding_kernel --launch-skip 3 --launch-count 1 python3 bench/tools/profile_embedding.py --d 16"""
import argparse

import torch

from dare_kernels import ops
from dare_kernels.bench.ids import IdsShape, make_ids_inputs

p = argparse.ArgumentParser()
p.add_argument("--B", type=int, default=1024)
p.add_argument("--L", type=int, default=10000)
p.add_argument("--d", type=int, default=16)
p.add_argument("--rows", type=int, default=1_000_000)
a = p.parse_args()
dev = torch.device("cuda")
table, batches = make_ids_inputs(IdsShape(a.B, a.L, a.d, 128, a.rows), dev)
for i in range(6):
    q, ids = batches[i % len(batches)]
    ops.topk_attention_embedding(q, [table], [ids], 128, backend="cuda")
torch.cuda.synchronize()
