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
    "synthetic": Loader(_synthetic, {"users": 5000, "targets": 4, "items": 5000, "categories": 100, "max_len": 1000,
                                     "task": "category", "seed": 0},
                        False, "generated histories with ground-truth relevant behaviours, two tasks (data/synthetic.py)"),
    "taobao": Loader(_public("taobao"), dict(_PUBLIC), True,
                     "Taobao UserBehavior.csv (user,item,category,behaviour,time; no header)"),
    "tmall": Loader(_public("tmall"), dict(_PUBLIC), True,
                    "Tmall user_log_format1.csv (header; user_id,item_id,cat_id,...,time_stamp,action_type)"),
}
