"""FuxiCTR's whole TWIN model, as shipped vs with its long_attention swapped for
dare_kernels.fuxictr.MultiHeadTopKAttention (state dict loaded as it is): forward
(eval, no_grad) and forward + backward (training loss, no optimiser step) times.

    FUXICTR_MODEL_ZOO=/path/to/FuxiCTR/model_zoo/LongCTR \\
    PYTHONPATH=. python bench/tools/fuxictr_twin_time.py --device cpu --threads 2 --B 64 --L 1000 4000 --emb 8 32
    # GPU rows (the issue's shape):
    PYTHONPATH=. python bench/tools/fuxictr_twin_time.py --device cuda --B 1024 --L 10000 --emb 8 32

Needs the fuxictr package (the wheel, no dependencies: the model code needs none of its
data stack, and packages that are absent -- polars, ray, scikit-learn, ... -- are
stood in for by empty modules, so a machine without network needs only the wheel) and
FuxiCTR's model_zoo/LongCTR (FUXICTR_MODEL_ZOO or --model-zoo). Two item fields of
--emb each (item_info_dim = 2·emb); histories left-padded, rows of random length in
[L/2, L]. Prints a markdown row per shape: medians of --repeat calls (CUDA: synchronised),
FuxiCTR / swapped."""
import argparse
import copy
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import statistics
import sys
import time
import types

import torch

STUBBED = ("polars", "ray", "sklearn", "h5py", "yaml", "tqdm", "pydantic", "pandas")


class _Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty modules for absent packages that fuxictr imports at load time but the
    model's forward never calls (data loading, metrics, config files)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.missing:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        m = types.ModuleType(spec.name)
        m.__path__ = []
        m.__getattr__ = lambda attr: type(attr, (), {"__init__": lambda self, *a, **k: None})
        return m

    def exec_module(self, module):
        pass


def import_fuxictr(zoo):
    stub = _Stub()
    stub.missing = {p for p in STUBBED if importlib.util.find_spec(p) is None}
    sys.meta_path.append(stub)
    sys.path.insert(0, zoo)
    try:
        from fuxictr.features import FeatureMap
        from TWIN.TWIN import TWIN
    finally:  # stand-ins for fuxictr's imports only: what torch imports later must be real or absent
        sys.meta_path.remove(stub)
        for name in [n for n in sys.modules if n.split(".")[0] in stub.missing]:
            globals().setdefault("_stubs", []).append(sys.modules.pop(name))
    return FeatureMap, TWIN, sorted(stub.missing)


def build(FeatureMap, TWIN, a, emb, device):
    fm = FeatureMap("synthetic", "/nonexistent")
    fm.features = {
        "user_id": {"type": "categorical", "source": "user", "vocab_size": 1000},
        "item_id": {"type": "categorical", "source": "item", "vocab_size": a.items, "padding_idx": 0},
        "cate_id": {"type": "categorical", "source": "item", "vocab_size": 1000, "padding_idx": 0},
    }
    fm.labels, fm.num_fields, fm.default_emb_dim = ["label"], 3, emb
    torch.manual_seed(0)
    model = TWIN(fm, gpu=-1, embedding_dim=emb, attention_dim=a.attention_dim, num_heads=a.heads, topk=a.k,
                 short_seq_len=50, optimizer="adam", loss="binary_crossentropy", model_root="/nonexistent",
                 verbose=0, metrics=["AUC"])
    with torch.no_grad():  # FuxiCTR starts embeddings at std 1e-4; ranking is the same, the scores less tied
        for table in model.embedding_layer.embedding_layer.embedding_layers.values():
            table.weight[1:].normal_()
    model.device = torch.device(device)
    return model.to(device)


def swap(model):
    from dare_kernels.fuxictr import MultiHeadTopKAttention
    old = model.long_attention
    swapped = copy.deepcopy(model)
    swapped.long_attention = MultiHeadTopKAttention(
        old.W_q.in_features, 0, 0, old.num_heads * old.head_dim, old.topk, old.num_heads,
        old.dropout.p if old.dropout is not None else 0).to(old.W_q.weight.device)
    swapped.long_attention.load_state_dict(old.state_dict())
    return swapped


def batch(a, B, L, device, g):
    n = torch.randint(L // 2, L + 1, (B,), generator=g)
    pad = torch.arange(L + 1) < (L - n)[:, None]
    items = torch.randint(1, a.items, (B, L + 1), generator=g).masked_fill(pad, 0)
    cates = torch.randint(1, 1000, (B, L + 1), generator=g).masked_fill(pad, 0)
    feats = {"user_id": torch.randint(0, 1000, (B,), generator=g), "label": torch.randint(0, 2, (B,)).float()}
    mask = (items[:, :-1] > 0).float()
    return ({k: v.to(device) for k, v in feats.items()},
            {"item_id": items.flatten().to(device), "cate_id": cates.flatten().to(device)}, mask.to(device))


def timed(fn, repeat, device):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-zoo", default=os.environ.get("FUXICTR_MODEL_ZOO", ""))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--B", type=int, default=64)
    p.add_argument("--L", type=int, nargs="+", default=[1000, 4000])
    p.add_argument("--emb", type=int, nargs="+", default=[8, 32], help="per item field; item_info_dim = 2 * emb")
    p.add_argument("--attention-dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if not os.path.isfile(os.path.join(a.model_zoo, "TWIN", "TWIN.py")):
        sys.exit("set FUXICTR_MODEL_ZOO (or --model-zoo) to FuxiCTR's model_zoo/LongCTR")
    if a.threads:
        torch.set_num_threads(a.threads)
    FeatureMap, TWIN, stubbed = import_fuxictr(a.model_zoo)
    print(f"device {a.device}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"stubbed {stubbed or 'none'}; B={a.B}, heads={a.heads}, attention_dim={a.attention_dim}, k={a.k}")
    print("| L | item dim | forward FuxiCTR / swapped ms | x | fwd+bwd FuxiCTR / swapped ms | x |")
    print("|---|---|---|---|---|---|")
    rows = []
    g = torch.Generator().manual_seed(0)
    for emb in a.emb:
        model = build(FeatureMap, TWIN, a, emb, a.device)
        swapped = swap(model)
        for L in a.L:
            inputs = batch(a, a.B, L, a.device, g)
            row = {"L": L, "item_dim": 2 * emb}
            for name, m in (("fuxictr", model), ("swapped", swapped)):
                def fwd():
                    m.eval()
                    with torch.no_grad():
                        m((dict(inputs[0]), dict(inputs[1]), inputs[2]))

                def fwd_bwd():
                    m.train()
                    out = m((dict(inputs[0]), dict(inputs[1]), inputs[2]))
                    m.compute_loss(out, m.get_labels(inputs)).backward()
                    m.zero_grad(set_to_none=True)
                row[f"{name}_fwd_ms"] = timed(fwd, a.repeat, a.device)
                row[f"{name}_fwd_bwd_ms"] = timed(fwd_bwd, a.repeat, a.device)
            rows.append(row)
            print(f"| {L} | {2 * emb} | {row['fuxictr_fwd_ms']:.1f} / {row['swapped_fwd_ms']:.1f} | "
                  f"{row['fuxictr_fwd_ms'] / row['swapped_fwd_ms']:.1f}x | "
                  f"{row['fuxictr_fwd_bwd_ms']:.1f} / {row['swapped_fwd_bwd_ms']:.1f} | "
                  f"{row['fuxictr_fwd_bwd_ms'] / row['swapped_fwd_bwd_ms']:.1f}x |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": a.device, "threads": torch.get_num_threads(), "B": a.B, "heads": a.heads,
                       "attention_dim": a.attention_dim, "k": a.k, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
