"""Build of the optional sparse-kernel extension (everything else is in pyproject.toml).

``mtrl_sparse.agents._sparse_kernels`` is a shared library of XLA FFI handlers
(``agents/kernels/sparse_matmul.cc``), compiled against the FFI headers jaxlib ships
(``jax.ffi.include_dir()``; jax is a build requirement). It is optional: without a C++17
compiler, or if the build fails, the install goes on and the masked layers use their pure-JAX
path (``mtrl_sparse.agents.sparse_linear`` says so when sparse compute is asked for).
Instruction sets: a build used where it is made (``pip install -e .``: the editable install
builds in place) targets the host CPU (``-march=native``); a wheel (``python -m build``,
``pip wheel``, ``pip install .``) may be copied to other machines, where a native build dies with
SIGILL on a CPU without the same vector extensions, so it is built for the architecture's
baseline. ``MTRL_SPARSE_PORTABLE=1`` makes any build portable; ``MTRL_SPARSE_NATIVE=1`` makes any
build native.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPTIMISE = ["-O3", "-std=c++17", "-fopenmp-simd"]


class BuildFfiExtension(build_ext):
    """build_ext that adds jaxlib's FFI headers and the host CPU's vector instructions."""

    def build_extensions(self) -> None:
        try:
            import jax.ffi  # a build requirement (pyproject.toml); imported only to build
        except ImportError as error:
            print(f"mtrl-sparse: sparse kernels not built (no jax.ffi headers: {error})")
            return
        native = ["-march=native"] if self._native() else []
        for extension in self.extensions:
            extension.include_dirs.append(jax.ffi.include_dir())
            extension.extra_compile_args = OPTIMISE + [f for f in native if self._accepts(f)]
        super().build_extensions()

    def _native(self) -> bool:
        """Whether to build for the host CPU: in place (an editable install) unless
        ``MTRL_SPARSE_PORTABLE`` is set, elsewhere only with ``MTRL_SPARSE_NATIVE`` set."""
        if os.environ.get("MTRL_SPARSE_PORTABLE"):
            return False
        in_place = bool(getattr(self, "editable_mode", False) or self.inplace)
        return in_place or bool(os.environ.get("MTRL_SPARSE_NATIVE"))

    def _accepts(self, flag: str) -> bool:
        """Whether the C++ compiler compiles an empty file with ``flag``."""
        with tempfile.TemporaryDirectory() as scratch:
            source = Path(scratch) / "probe.cc"
            source.write_text("int main() { return 0; }\n")
            try:
                self.compiler.compile([str(source)], output_dir=scratch, extra_postargs=[flag])
            except Exception:  # a CompileError, or no compiler at all
                return False
        return True


setup(
    ext_modules=[Extension(
        "mtrl_sparse.agents._sparse_kernels",
        sources=["agents/kernels/sparse_matmul.cc"],
        language="c++",
        optional=True,
    )],
    cmdclass={"build_ext": BuildFfiExtension},
)
