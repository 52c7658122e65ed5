"""Where the reference models' search stage and training step spend GPU time
(torch.profiler, CUDA kernels by total time): python bench/profile_model.py"""
import torch
from torch.profiler import ProfilerActivity, profile

from dare_kernels.models import LongSequenceCTR

dev = torch.device("cuda")
B, L, n_items, n_cats, k = 1024, 10000, 1_000_000, 10_000, 128
g = torch.Generator(device=dev).manual_seed(0)
batch = {"history_items": torch.randint(1, n_items + 1, (B, L), device=dev, generator=g),
         "history_cats": torch.randint(1, n_cats + 1, (B, L), device=dev, generator=g),
         "lengths": torch.full((B,), L, device=dev),
         "target_item": torch.randint(1, n_items + 1, (B,), device=dev, generator=g),
         "target_cat": torch.randint(1, n_cats + 1, (B,), device=dev, generator=g),
         "label": torch.randint(0, 2, (B,), device=dev, generator=g).float()}
for variant, d_att in (("dare", 16), ("twin", 128)):
    model = LongSequenceCTR(variant, n_items, n_cats, L, d_att=d_att, d_rep=128, k=k).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch)[0].float(), batch["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

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
