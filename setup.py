"""Build the compiled kernels (fastbp._kernels.*); all metadata lives in pyproject.toml.

Code generation: every ``fastbp/_kernels/*.tp`` is rendered (Tempita) with the spec tables of
``fastbp/_specs.py`` into the file without ``.tp`` before Cython runs (the rendered files are
git-ignored).

Environment switches:

* ``FASTBP_REQUIRE_OPENMP=1`` -- fail instead of building serially when the compiler has no
  working OpenMP.
* ``FASTBP_DEBUG_CYTHON=1`` -- turn Cython bounds checking (and initialised-view checking) back on,
  for one test run under guard; never for a release build.
* ``FASTBP_SANITIZE=1`` -- build the kernels with AddressSanitizer + UndefinedBehaviorSanitizer
  (gcc/clang), for the sanitizer test run of ``.ci/run``; never for a release build.  Python is
  not instrumented, so run it with the ASan runtime preloaded (see ``.ci/run``).

Never ``-ffast-math`` (it flushes denormals for the whole process) and never ``-march=native``
(wheels run on other CPUs).
"""

import importlib.util
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
KERNELS = ROOT / "fastbp" / "_kernels"


def _flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _openmp_flags(compiler_type):
    """(compile_args, link_args) spelling OpenMP for this compiler, before probing."""
    if compiler_type == "msvc":
        return ["/openmp"], []
    if sys.platform == "darwin":
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\\n", n > 0 && omp_get_max_threads() > 0);
        return 0;
    }
    """
)


def _probe_openmp(compiler, compile_args, link_args):
    """True when `compiler` compiles, links and runs a tiny OpenMP program."""
    tmp = tempfile.mkdtemp(prefix="fastbp-omp-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(PROBE)
        objects = compiler.compile([src], output_dir=tmp, extra_postargs=compile_args)
        exe = os.path.join(tmp, "probe")
        compiler.link_executable(objects, exe, extra_postargs=link_args)
        return True
    except Exception:  # any compile or link failure means: no usable OpenMP
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    """Probe OpenMP once, then add the right flags to every kernel extension."""

    def build_extensions(self):
        ctype = self.compiler.compiler_type
        omp_c, omp_l = _openmp_flags(ctype)
        has_openmp = _probe_openmp(self.compiler, omp_c, omp_l)
        if not has_openmp:
            msg = (
                "fastbp: the C compiler has no working OpenMP; building the kernels SERIALLY "
                "(fastbp.openmp_enabled() will be False)."
            )
            if _flag("FASTBP_REQUIRE_OPENMP"):
                raise RuntimeError(msg + " FASTBP_REQUIRE_OPENMP=1 forbids that.")
            print("WARNING: " + msg, file=sys.stderr)
            omp_c, omp_l = [], []
        base = ["/O2"] if ctype == "msvc" else ["-O3", "-std=c99", *SAFE_VECTORISING]
        for ext in self.extensions:
            ext.extra_compile_args = base + omp_c + SANITIZE
            ext.extra_link_args = omp_l + SANITIZE
        super().build_extensions()


# Flags that let gcc/clang vectorise the select-based math in csrc/ without changing results or
# the process's floating-point environment: libm calls need not set errno, and FP exception
# flags are not observed (so comparisons may be if-converted).  Measured: without
# -fno-trapping-math no loop over fastbp_exp() vectorises ("control flow in loop").
SAFE_VECTORISING = ["-fno-math-errno", "-fno-trapping-math"]

DEBUG = _flag("FASTBP_DEBUG_CYTHON")
# -O1 (after -O3, so it wins) keeps the reports' stack traces exact; every UB report is fatal.
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-O1"] if _flag("FASTBP_SANITIZE") else []
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

def _render_templates():
    """Render every ``_kernels/*.tp`` (Tempita, as scikit-learn's ``_loss.pyx.tp``) with the spec
    tables of fastbp/_specs.py, which is loaded by path (it imports nothing from fastbp).  A file
    is rewritten only when its text changes, so incremental builds stay incremental."""
    from Cython import Tempita

    spec = importlib.util.spec_from_file_location("_fastbp_specs", ROOT / "fastbp" / "_specs.py")
    specs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(specs)
    namespace = {
        "activations": list(specs.ACTIVATIONS.values()),
        "fused_forms": [(code, row) for code, (row, _) in specs.FUSED_FORMS.items()],
        "fused_from_input": specs.FUSED_FROM_INPUT,
    }
    for template in sorted(KERNELS.glob("*.tp")):
        target = template.with_suffix("")  # _activations.pyx.tp -> _activations.pyx
        lines = Tempita.sub(template.read_text(), **namespace).splitlines(keepends=True)
        at = 1 if lines and lines[0].startswith("# cython:") else 0  # directives stay first
        lines.insert(at, f"# GENERATED from {template.name} by setup.py: edit that file.\n")
        text = "".join(lines)
        if not target.exists() or target.read_text() != text:
            target.write_text(text)


_render_templates()

extensions = [
    Extension(
        f"fastbp._kernels.{pyx.stem}",
        [str(pyx.relative_to(ROOT))],
        include_dirs=["csrc", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for pyx in sorted(KERNELS.glob("*.pyx"))
]



def _directives_changed():
    """True when the generated C was made under other directives (a debug build, say)."""
    stamp = ROOT / "build" / "fastbp-directives.txt"
    now = repr(sorted(DIRECTIVES.items()))
    changed = not stamp.exists() or stamp.read_text() != now
    stamp.parent.mkdir(exist_ok=True)
    stamp.write_text(now)
    return changed


setup(
    ext_modules=cythonize(
        extensions, compiler_directives=DIRECTIVES, force=_directives_changed()
    ),
    cmdclass={"build_ext": BuildExt},
)
