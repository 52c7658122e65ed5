"""How every benchmark measures: inputs that cycle past the device cache, median
timers (CUDA events around back-to-back calls on a GPU, time.perf_counter on a CPU),
CUDA-graph replay, the device's copy bandwidth and a description of the machine.
The main job times with time_call; the pytest suites in bench/ take their inputs and
(on a GPU) their timer, cuda_clock, from here."""
from __future__ import annotations

import dataclasses
import math
import platform
import statistics
import sys
import time
from typing import Callable, Optional

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_device(name: Optional[str] = None) -> torch.device:
    """`name`, else the current GPU if there is one, else the CPU (a CUDA device with its index)."""
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    """The machine and versions a run is of (the JSON's "env")."""
    info = {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        try:
            import triton
            info["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        info["threads"] = torch.get_num_threads()
    return info


def cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20))
    return 64 << 20  # larger than this machine's L3


@dataclasses.dataclass(frozen=True)
class Shape:
    """One search-stage shape: B rows of L keys of width d, top k; T targets per row (0: query (B, d))."""
    B: int
    L: int
    d: int
    k: int
    T: int = 0  # 0: query (B, d); else (B, T, d)
    dtype: str = "bfloat16"

    def key_bytes(self) -> int:
        return self.B * self.L * self.d * DTYPES[self.dtype].itemsize

    def id(self) -> str:
        t = f"-T{self.T}" if self.T else ""
        return f"B{self.B}{t}-L{self.L}-d{self.d}-k{self.k}-{self.dtype}"

    def label(self) -> str:
        t = f" T={self.T}" if self.T else ""
        return f"B={self.B}{t} L={self.L} d={self.d} k={self.k} {self.dtype}"

    def fields(self) -> dict:
        """The numeric fields (and dtype) a result row carries."""
        return {"B": self.B, "T": self.T, "L": self.L, "d": self.d, "k": self.k, "dtype": self.dtype}


def make_inputs(shape: Shape, device: torch.device, seed: int = 0) -> list:
    """Enough independent (query, keys) sets that cycling through them reads
    twice the device cache: the timings measure memory, not cache."""
    copies = max(1, math.ceil(2 * cache_bytes(device) / max(1, shape.key_bytes())))
    copies = min(copies, 64)
    g = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[shape.dtype]
    qshape = (shape.B, shape.T, shape.d) if shape.T else (shape.B, shape.d)
    return [(torch.randn(qshape, device=device, generator=g, dtype=torch.float32).to(dtype),
             torch.randn(shape.B, shape.L, shape.d, device=device, generator=g, dtype=torch.float32).to(dtype))
            for _ in range(copies)]


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_clock() -> float:
    """time.perf_counter after waiting for the current GPU: the pytest suites' timer on
    CUDA (bench/conftest.py passes it as pytest-benchmark's --benchmark-timer)."""
    torch.cuda.synchronize()
    return time.perf_counter()


def time_call(fn: Callable, inputs: list, device: torch.device, reps: int = 50, warmup: int = 5) -> float:
    """Median seconds per call. On a GPU: CUDA events around back-to-back
    batches of calls (the queue never drains, so host launch cost hides only
    when the kernel is slower than the launch, as in real use)."""
    n = len(inputs)
    for i in range(warmup):
        fn(*inputs[i % n])
    sync(device)
    if device.type == "cuda":
        batch = max(1, min(20, reps // 5))
        times = []
        for r in range(max(5, reps // batch)):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(batch):
                fn(*inputs[(r * batch + i) % n])
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / batch)
        return statistics.median(times)
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(*inputs[i % n])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def capture(fn: Callable, device: torch.device) -> Callable:
    """One fn() call captured in a CUDA graph (fn is called once first, outside the
    capture, for warm-up and allocations); returns the graph's replay."""
    fn()
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def time_graph(fn: Callable, device: torch.device, reps: int = 100) -> float:
    """Median seconds per replay of a CUDA graph of one fn() call (capture): the GPU
    work alone, without the host's launch cost."""
    return time_call(capture(fn, device), [()], device, reps=reps)


def copy_bandwidth(device: torch.device, nbytes: Optional[int] = None) -> float:
    """Bytes per second of a large device-to-device copy, counting read + write."""
    nbytes = nbytes or ((1 << 30) if device.type == "cuda" else (256 << 20))
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_call(lambda: dst.copy_(src), [()], device, reps=20, warmup=3)
    return 2 * nbytes / t


def say(args, msg: str):
    """A progress line on stderr, unless args.quiet."""
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)
