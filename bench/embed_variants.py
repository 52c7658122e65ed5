"""A/B of the CUDA embedding kernel's compiled variants (run once per
DARE_CUDA_EMBED_VARIANT value, in separate processes: the knob is read once):
  DARE_CUDA_EMBED_VARIANT=1 python bench/embed_variants.py"""
import os

import torch

from dare_kernels import bench, bench_ids, ops

dev = torch.device("cuda")
variant = os.environ.get("DARE_CUDA_EMBED_VARIANT", "0")
for rows, d in ((1_000_000, 16), (1_000_000, 32), (1_000_000, 128), (64_000_000, 16)):
    shape = bench_ids.IdsShape(1024, 10000, d, 128, rows)
    table, batches = bench_ids.make_ids_inputs(shape, dev)
    t = bench.time_call(lambda q, i: ops.topk_attention_embedding(q, [table], [i], 128, backend="cuda"),
                        batches, dev, reps=30)
    print(f"variant {variant} rows={rows} d={d}: cuda {t * 1e3:.3f} ms", flush=True)
    del table, batches
