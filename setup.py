"""Builds dare_kernels._C: the op schema, the CPU kernels and, when wanted, the
CUDA kernels (compiling them needs a CUDA build of torch and a CUDA toolkit, not a GPU).

Environment:
  DARE_BUILD_CUDA=1 / 0   force the CUDA sources on / off. Unset (auto): on when torch is a
                          CUDA build, a toolkit is found and either a CUDA device is visible
                          (torch.cuda.is_available()) or TORCH_CUDA_ARCH_LIST is set; so a
                          machine without a GPU builds the CPU kernels only (cuda_build_decision)
  TORCH_CUDA_ARCH_LIST    CUDA targets (default: csrc/build.json's cuda_arch, "8.0;9.0")
  CUDA_HOME               CUDA toolkit (default: torch's guess, else /usr/local/cuda)
  MAX_JOBS                parallel compile jobs

Sources, flags, C++ standard and default arch come from csrc/build.json, which
CMakeLists.txt reads too. The build prints its CUDA decision and the reason
(`pip install -v` shows it).
"""
import glob
import json
import os
import shutil
import sys
from typing import Callable, Mapping, Optional

from setuptools import find_packages, setup


def _find_cuda_home():
    """torch guesses CUDA_HOME from `nvcc` on PATH, which is wrong when that is
    a wrapper script; accept only a directory holding a real toolkit."""
    def ok(path):
        return path and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h")) \
            and os.path.isfile(os.path.join(path, "bin", "nvcc"))

    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    return next((c for c in candidates if ok(c)), None)


def cuda_build_decision(env: Mapping[str, str], torch_cuda: Optional[str], cuda_home: Optional[str],
                        device_visible: Callable[[], bool]):
    """(whether to compile the CUDA sources, why), from the environment as the user set it
    (`env`), torch's CUDA version (None for a CPU build), the toolkit found (None if none) and
    `device_visible()` (torch.cuda.is_available; called only when the answer depends on it).

    DARE_BUILD_CUDA=1 forces them on (RuntimeError without a CUDA torch and a toolkit),
    DARE_BUILD_CUDA=0 off. Otherwise they are built when torch is a CUDA build, a toolkit
    is found and either a CUDA device is visible or TORCH_CUDA_ARCH_LIST names targets
    (building on one machine for a GPU of another): without a GPU, the CPU kernels only."""
    flag = env.get("DARE_BUILD_CUDA", "").strip()
    if flag == "1":
        if torch_cuda is None or cuda_home is None:
            raise RuntimeError(
                f"DARE_BUILD_CUDA=1 needs a CUDA build of torch and a CUDA toolkit; "
                f"torch's CUDA: {torch_cuda}, CUDA_HOME={cuda_home}")
        return True, "DARE_BUILD_CUDA=1"
    if flag == "0":
        return False, "DARE_BUILD_CUDA=0"
    if torch_cuda is None:
        return False, "torch is not a CUDA build"
    if cuda_home is None:
        return False, "no CUDA toolkit found (CUDA_HOME, CUDA_PATH, nvcc on PATH, /usr/local/cuda)"
    if env.get("TORCH_CUDA_ARCH_LIST", "").strip():
        return True, f"TORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST'].strip()}"
    if device_visible():
        return True, "a CUDA device is visible"
    return False, ("no CUDA device is visible and TORCH_CUDA_ARCH_LIST is not set "
                   "(DARE_BUILD_CUDA=1 builds them anyway)")


ROOT = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(ROOT, "csrc", "build.json")) as f:
    BUILD = json.load(f)


def build_sources(with_cuda: bool) -> list:
    """csrc/build.json's source globs (CMake reads the same lists), relative to the root."""
    def expand(globs):
        return sorted({os.path.relpath(path, ROOT) for g in globs for path in glob.glob(os.path.join(ROOT, g))})
    return expand(BUILD["cpu_sources"]) + (expand(BUILD["cuda_sources"]) if with_cuda else [])


def main():
    env = dict(os.environ)  # as the user set it, before the defaults below
    cuda_home = _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # must precede the cpp_extension import
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", BUILD["cuda_arch"])

    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    with_cuda, why = cuda_build_decision(env, torch.version.cuda, CUDA_HOME, torch.cuda.is_available)
    print(f"dare_kernels._C: CUDA sources {'on' if with_cuda else 'off'}: {why}", file=sys.stderr)

    # csrc/cuda (with CUDA): the kernels (*.cu, one per key dtype: they compile in parallel)
    # and the host side (*.cpp).
    sources = build_sources(with_cuda)
    # -fopenmp: at::parallel_for is a header template that runs serially without it.
    # An explicit -std= keeps torch's cpp_extension from choosing its own.
    std = f"-std=c++{BUILD['cxx_standard']}"
    cxx_flags = BUILD["cxx_flags"] + [std]
    nvcc_flags = BUILD["nvcc_flags"] + [std]
    if with_cuda:
        # cusparse.h etc. ship inside the nvidia wheels, not always in the toolkit.
        include_dirs = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*",
                                                     "include")))
        ext = CUDAExtension("dare_kernels._C", sources, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                            extra_link_args=BUILD["link_flags"])
    else:
        ext = CppExtension("dare_kernels._C", sources, extra_compile_args={"cxx": cxx_flags},
                           extra_link_args=BUILD["link_flags"])

    class Build(BuildExtension):
        """Records what the library was built against, so that the import can refuse
        (with a clear message) a library built for another torch."""

        def run(self):
            super().run()
            info = {
                "torch": torch.__version__,
                "cuda": torch.version.cuda if with_cuda else None,
                "with_cuda": with_cuda,
                "arch": os.environ["TORCH_CUDA_ARCH_LIST"] if with_cuda else None,
            }
            for out_dir in {os.path.join(ROOT, "dare_kernels"),
                            os.path.join(self.build_lib, "dare_kernels")}:
                if os.path.isdir(out_dir):
                    with open(os.path.join(out_dir, "_C.json"), "w") as f:
                        json.dump(info, f, indent=1)

    setup(
        packages=find_packages(include=["dare_kernels", "dare_kernels.*"]),
        package_data={"dare_kernels": ["_C.json"]},
        ext_modules=[ext],
        cmdclass={"build_ext": Build.with_options(no_python_abi_suffix=True)},
    )


# pip (setuptools' build backend) and `python setup.py` run this file as __main__; a test
# imports it under another name for cuda_build_decision alone.
if __name__ == "__main__":
    main()
