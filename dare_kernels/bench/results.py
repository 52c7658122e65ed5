"""The JSON of a run, written by the main job (`--json`) and by the pytest suites
(`--summary-json`), read by the renderer (dare_kernels.bench.render, through
`python -m dare_kernels.bench.report`).

One object per run: "env" (device and versions), "commit" and "date" (the code
measured and when), "command", optionally "copy_GBps" and "note", and one list of
row objects per section: "rows" (the search stage), "ids_rows" (search from ids),
"model_rows" (the reference models), "suite_rows" (the pytest suites' summary).
The repository keeps the latest run per device in bench/results/<device>.json."""
from __future__ import annotations

import datetime
import json
import os
import subprocess
from typing import Optional

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("csrc", "dare_kernels")


def _git(*args) -> Optional[str]:
    try:
        return subprocess.run(["git", "-C", PACKAGE, *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def commit() -> Optional[str]:
    """The commit the package's sources are at, `-dirty` when csrc/ or dare_kernels/
    differ from it; None outside a git checkout (an installed package)."""
    top = _git("rev-parse", "--show-toplevel")
    head = _git("rev-parse", "--short", "HEAD")
    if not top or not head or os.path.realpath(os.path.dirname(PACKAGE)) != os.path.realpath(top):
        return None
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", *(os.path.join(top, s) for s in SOURCES))
    return head + ("-dirty" if dirty else "")


def provenance() -> dict:
    """{"commit": ..., "date": ...} of a run made now (no commit outside a checkout)."""
    out = {"date": datetime.date.today().isoformat()}
    c = commit()
    if c:
        out["commit"] = c
    return out


def write(result: dict, path: str):
    """Writes one run, adding its commit and date unless it has them."""
    result = {**result, **{k: v for k, v in provenance().items() if k not in result}}
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)
