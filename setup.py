"""Builds ``spectral_edge_fast._C``: a CppExtension (OpenMP) by default, a
CUDAExtension when torch has CUDA and nvcc is present; and
``spectral_edge_fast.analysis._secular`` and ``._slide_terms``, plain C++
for the analysis layer (no torch).

Environment switches:
  SEF_NO_EXT=1      build no extension (the package falls back to torch/triton)
  SEF_FORCE_CUDA=1  build the CUDA kernels even without a visible GPU
  SEF_NO_CUDA=1     never build the CUDA kernels
"""
import glob
import os
import shutil

from setuptools import Extension, setup


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def analysis_extensions():
    # -O3 without -ffast-math: the secular solver's differences are ordered on purpose
    flags = ["-O3", "-std=c++17", "-Wno-psabi"]
    return [
        Extension(f"spectral_edge_fast.analysis._{name}", [f"csrc/analysis/{name}.cpp"], extra_compile_args=flags)
        for name in ("secular", "slide_terms")
    ]


def get_extensions():
    if _flag("SEF_NO_EXT"):
        return []
    return torch_extensions() + analysis_extensions()


def torch_extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "kernels", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-march=x86-64-v2" if os.uname().machine == "x86_64" else "-O3"]
    include_dirs = [os.path.join(here, "csrc")]
    want_cuda = not _flag("SEF_NO_CUDA") and (
        _flag("SEF_FORCE_CUDA") or (torch.version.cuda is not None and torch.cuda.is_available())
    )
    if want_cuda and CUDA_HOME is not None and shutil.which("nvcc") is not None and torch.version.cuda is not None:
        sources += sorted(glob.glob(os.path.join("csrc", "kernels", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        return [
            CUDAExtension(
                "spectral_edge_fast._C",
                sources,
                include_dirs=include_dirs,
                define_macros=[("SEF_WITH_CUDA", "1")],
                extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17"]},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        CppExtension(
            "spectral_edge_fast._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args=cxx,
            extra_link_args=["-fopenmp"],
        )
    ]


def _cmdclass():
    try:
        from torch.utils.cpp_extension import BuildExtension
    except ImportError:
        return {}
    return {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


setup(ext_modules=get_extensions(), cmdclass=_cmdclass())
