"""setup.py's choice of building the CUDA sources, as the README documents it: forced by
DARE_BUILD_CUDA=1 / 0; otherwise only with a CUDA build of torch and a toolkit, and then only
when a CUDA device is visible or TORCH_CUDA_ARCH_LIST is set (no GPU: the CPU kernels only)."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def load_setup():
    spec = importlib.util.spec_from_file_location("dare_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: setup() does not run
    return module


decide = load_setup().cuda_build_decision
CUDA, TOOLKIT = "13.0", "/usr/local/cuda"


def never():
    raise AssertionError("the device was queried although the answer does not depend on it")


@pytest.mark.parametrize("env, torch_cuda, toolkit, device, expected", [
    # auto (DARE_BUILD_CUDA unset): a GPU, or targets named
    ({}, CUDA, TOOLKIT, True, True),
    ({}, CUDA, TOOLKIT, False, False),  # toolkit, no GPU: the CPU kernels only
    ({"TORCH_CUDA_ARCH_LIST": "9.0"}, CUDA, TOOLKIT, never, True),
    ({"TORCH_CUDA_ARCH_LIST": " "}, CUDA, TOOLKIT, False, False),
    ({"DARE_BUILD_CUDA": ""}, CUDA, TOOLKIT, False, False),
    ({}, None, TOOLKIT, never, False),  # a CPU build of torch
    ({}, CUDA, None, never, False),  # no toolkit
    ({"TORCH_CUDA_ARCH_LIST": "9.0"}, CUDA, None, never, False),
    # forced
    ({"DARE_BUILD_CUDA": "1"}, CUDA, TOOLKIT, never, True),  # what .ci/run and bench/device.sh set
    ({"DARE_BUILD_CUDA": "0"}, CUDA, TOOLKIT, never, False),
    ({"DARE_BUILD_CUDA": "0", "TORCH_CUDA_ARCH_LIST": "9.0"}, CUDA, TOOLKIT, never, False),
])
def test_cuda_build_decision(env, torch_cuda, toolkit, device, expected):
    visible = device if callable(device) else (lambda: device)
    with_cuda, why = decide(env, torch_cuda, toolkit, visible)
    assert with_cuda is expected and why


@pytest.mark.parametrize("torch_cuda, toolkit", [(None, TOOLKIT), (CUDA, None)])
def test_forced_cuda_without_toolkit_raises(torch_cuda, toolkit):
    with pytest.raises(RuntimeError, match="DARE_BUILD_CUDA=1 needs"):
        decide({"DARE_BUILD_CUDA": "1"}, torch_cuda, toolkit, never)


def test_setup_py_prints_its_decision():
    """`python setup.py --name` (what pip's build runs, without compiling): the decision on this
    machine, with DARE_BUILD_CUDA=0 forced off whatever it has."""
    env = {k: v for k, v in os.environ.items() if k not in ("DARE_BUILD_CUDA", "TORCH_CUDA_ARCH_LIST")}
    env["DARE_BUILD_CUDA"] = "0"
    out = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "dare_kernels._C: CUDA sources off: DARE_BUILD_CUDA=0" in out.stderr
    assert out.stdout.strip().endswith("dare-kernels")


@pytest.mark.parametrize("source", ["csrc/cpu/topk_attention_cpu.cpp", "csrc/cpu/topk_attention_embedding_cpu.cpp"])
def test_cpu_kernels_compile_without_x86_vectors(source):
    """The CPU kernels' portable code stands alone, as on an ARM or POWER server: with
    DARE_NO_SIMD (csrc/cpu/isa.h) no x86 vector code is compiled, and every template the
    kernels instantiate must still compile (a syntax-only pass of the C++ compiler)."""
    import shutil
    import sysconfig

    from torch.utils.cpp_extension import include_paths
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    flags = ["-std=c++20", "-fsyntax-only", "-DDARE_NO_SIMD", "-fopenmp"]
    incs = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    out = subprocess.run([cxx, *flags, *incs, os.path.join(ROOT, source)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
