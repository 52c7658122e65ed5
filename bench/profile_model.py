"""Where the reference models' search stage and training step spend GPU time
(torch.profiler, CUDA kernels by total time): python bench/profile_model.py"""
import torch
from torch.profiler import ProfilerActivity, profile

from dare_kernels.bench import MODEL_CATS, MODEL_ITEMS, model_batch, train_step
from dare_kernels.models import LongSequenceCTR

dev = torch.device("cuda")
B, L, k = 1024, 10000, 128
batch = model_batch(dev, B, L, MODEL_ITEMS, MODEL_CATS)
for variant, d_att in (("dare", 16), ("twin", 128)):
    model = LongSequenceCTR(variant, MODEL_ITEMS, MODEL_CATS, L, d_att=d_att, d_rep=128, k=k).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        train_step(model, opt, batch, dev)

    def search():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model.search_stage(batch)

    for name, fn in (("search", search), ("train step", step)):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
        print(f"== {variant} d_att={d_att} {name} (3 calls)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))
    del model, opt
    torch.cuda.empty_cache()
