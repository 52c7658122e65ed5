"""LOADERS: the datasets the training CLI can load, by name (`--data NAME` or
`--data NAME:PATH`). A Loader says whether it reads a file and which options it
takes, with its defaults; the CLI rejects an option the chosen loader does not
use instead of ignoring it."""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional

from .batching import Interactions
from .public import PROTOCOL
from .synthetic import SyntheticConfig, generate


@dataclasses.dataclass(frozen=True)
class Loader:
    load: Callable[..., Interactions]  # load(path, **options)
    defaults: Dict[str, object]        # the options it takes and their defaults
    needs_path: bool
    doc: str
    batch_size: int = 2048  # the training CLI's --batch-size default on these data (the paper's 2048)

    def __call__(self, path: Optional[str] = None, **options) -> Interactions:
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise TypeError(f"options not used by this loader: {', '.join(sorted(unknown))}")
        return self.load(path, **{**self.defaults, **options})


def _synthetic(path, *, users, targets, items, categories, max_len, task, seed):
    return generate(SyntheticConfig(users=users, targets=targets, n_items=items, n_categories=categories,
                                    max_len=max_len, min_len=min(max_len, max(10, max_len // 20)), task=task,
                                    seed=seed))


def _public(name):
    def load(path, **options):
        from . import public
        return getattr(public, f"load_{name}")(path, **options)
    return load


# The public loaders' protocol defaults are the DARE authors' (public.PROTOCOL).
_PUBLIC = {"max_len": 1000, **PROTOCOL, "seed": 0}

LOADERS: Dict[str, Loader] = {
    # Sizes that learn on a laptop CPU in seconds (the CPU model study's): 60000 impressions of 3000 users,
    # histories up to 300, trained in batches of 512 (2048 would be 46 updates in 2 epochs).
    "synthetic": Loader(_synthetic, {"users": 3000, "targets": 20, "items": 5000, "categories": 100, "max_len": 300,
                                     "task": "category", "seed": 0},
                        False, "generated histories with ground-truth relevant behaviours, two tasks (data/synthetic.py)",
                        batch_size=512),
    "taobao": Loader(_public("taobao"), dict(_PUBLIC), True,
                     "Taobao UserBehavior.csv (user,item,category,behaviour,time; no header)"),
    "tmall": Loader(_public("tmall"), dict(_PUBLIC), True,
                    "Tmall user_log_format1.csv (header; user_id,item_id,cat_id,...,time_stamp,action_type)"),
}
