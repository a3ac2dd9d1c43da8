"""Build step of whisperkit: compiles the Pythran backend's kernels ahead of time, at install.

Everything else about the package lives in pyproject.toml.  `pip install .` and `pip install -e .`
both run this (PEP 517/660, requirements in [build-system]); the kernels land in
backends/pythran_backend/ (editable) or in the wheel.  If the compilation cannot happen (no pythran
at build time, no C++ compiler, a compiler error) the install still succeeds with a warning, and the
Pythran backend reports itself unavailable with the reason.

Environment:
  WHISPERKIT_SKIP_PYTHRAN=1        do not try to compile the kernels
  WHISPERKIT_PYTHRAN_MARCH=...     -march value (default: native; the kernels are built on the
                                   machine that runs them; use e.g. x86-64-v3 for a portable wheel)
"""
import os
import platform
import sys
import time

from setuptools import setup
from setuptools.command.build_ext import build_ext

KERNELS = "whisperkit.backends.pythran_backend._kernels"
SOURCE = os.path.join("backends", "pythran_backend", "src", "_kernels.py")
# the whole decoding step (decoder_step); it imports helpers from _kernels.py
STEP = "whisperkit.backends.pythran_backend._step"
STEP_SOURCE = os.path.join("backends", "pythran_backend", "src", "_step.py")


def _warn(msg):
    bar = "=" * 78
    print(f"\n{bar}\nWARNING (whisperkit): {msg}\nThe install goes on; the 'pythran' backend will be "
          f"listed as unavailable.\n{bar}\n", file=sys.stderr, flush=True)


ext_modules = []
BuildExtBase = build_ext
if os.environ.get("WHISPERKIT_SKIP_PYTHRAN", "") not in ("", "0"):
    _warn("WHISPERKIT_SKIP_PYTHRAN is set: the Pythran kernels are not compiled.")
else:
    try:
        from pythran.dist import PythranBuildExt, PythranExtension
    except Exception as exc:  # pythran missing (e.g. --no-build-isolation without it)
        _warn(f"pythran is not importable at build time ({exc}): the Pythran kernels are not compiled.")
    else:
        march = os.environ.get("WHISPERKIT_PYTHRAN_MARCH", "native")
        # -ffast-math: vectorised exp (libmvec) and float reductions; the kernels never rely on
        # inf/nan (masks are loop bounds, softmax maxima are finite).
        flags = ["-O3", f"-march={march}", "-ffast-math", "-fopenmp", "-w"]
        ext_modules.append(PythranExtension(
            KERNELS, sources=[SOURCE],
            # The kernels call no BLAS (GEMMs run on NumPy's), so no CBLAS is linked.
            config=["compiler.blas=none"],
            define_macros=[("USE_XSIMD", None)],
            extra_compile_args=flags,
            extra_link_args=["-fopenmp"]))
        # The step's float16 widening is integer work per weight: on AVX-512 machines full-width vectors
        # halve it (GCC prefers 256-bit ones by default); elsewhere the option changes nothing.
        wide = ["-mprefer-vector-width=512"] if platform.machine().lower() in ("x86_64", "amd64") else []
        ext_modules.append(PythranExtension(
            STEP, sources=[STEP_SOURCE], config=["compiler.blas=none"], define_macros=[("USE_XSIMD", None)],
            extra_compile_args=flags + wide, extra_link_args=["-fopenmp"]))
        BuildExtBase = PythranBuildExt[build_ext]


class OptionalPythranBuildExt(BuildExtBase):
    """build_ext that never fails the install because the kernels did not compile."""

    def run(self):
        t0 = time.perf_counter()
        try:
            super().run()
        except Exception as exc:
            _warn(f"could not compile the Pythran kernels ({type(exc).__name__}: {exc}). "
                  "Is a C++ compiler (g++) installed?")
        else:
            if self.extensions:
                print(f"whisperkit: Pythran kernels compiled in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        finally:  # the C++ that pythran generated next to the sources is a build product, not package data
            for source in (SOURCE, STEP_SOURCE):
                generated = os.path.splitext(source)[0] + ".cpp"
                if os.path.exists(generated):
                    os.remove(generated)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(f"could not compile {ext.name} ({type(exc).__name__}: {exc}). Is a C++ compiler (g++) installed?")

    def copy_extensions_to_source(self):
        # editable installs copy the built module next to the sources; skip what did not build
        self.extensions = [e for e in self.extensions if os.path.exists(self.get_ext_fullpath(e.name))
                           or os.path.exists(os.path.join(self.build_lib, self.get_ext_filename(e.name)))]
        super().copy_extensions_to_source()


setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalPythranBuildExt},
      # pythran translates src/_kernels.py to C++ beside it while setuptools lists files: not package data
      exclude_package_data={"whisperkit.backends.pythran_backend": ["src/*.cpp"]})
