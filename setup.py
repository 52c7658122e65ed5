"""Builds dare_kernels._C: the op schema, the CPU kernel and, when a CUDA build
of torch meets a CUDA toolkit, the CUDA kernel (no GPU needed to compile).

Environment:
  DARE_BUILD_CUDA=1 / 0   force the CUDA sources on / off (default: auto-detect)
  TORCH_CUDA_ARCH_LIST    CUDA targets (default: csrc/build.json's cuda_arch, "8.0;9.0")
  CUDA_HOME               CUDA toolkit (default: torch's guess, else /usr/local/cuda)
  MAX_JOBS                parallel compile jobs

Sources, flags, C++ standard and default arch come from csrc/build.json, which
CMakeLists.txt reads too.
"""
import glob
import json
import os
import shutil

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


ROOT = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(ROOT, "csrc", "build.json")) as f:
    BUILD = json.load(f)


def build_sources(with_cuda: bool) -> list:
    """csrc/build.json's source globs (CMake reads the same lists), relative to the root."""
    def expand(globs):
        return sorted({os.path.relpath(path, ROOT) for g in globs for path in glob.glob(os.path.join(ROOT, g))})
    return expand(BUILD["cpu_sources"]) + (expand(BUILD["cuda_sources"]) if with_cuda else [])


cuda_home = _find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # must precede the cpp_extension import
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", BUILD["cuda_arch"])

import torch  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

flag = os.environ.get("DARE_BUILD_CUDA", "").strip()
if flag in ("0", "1"):
    with_cuda = flag == "1"
    if with_cuda and (torch.version.cuda is None or CUDA_HOME is None):
        raise RuntimeError(
            f"DARE_BUILD_CUDA=1 needs a CUDA build of torch and a CUDA toolkit; "
            f"torch {torch.__version__} (CUDA {torch.version.cuda}), CUDA_HOME={CUDA_HOME}")
else:
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None

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
    include_dirs = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*", "include")))
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
