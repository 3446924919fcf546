"""fastbp._kernels._blas: the one GEMM route of the process, on every route available.

How the tests reach each route: in this process through ``_blas._select(route)`` (the same
function the import runs with ``FASTBP_BLAS``), restored afterwards by the ``blas_route``
fixture; the environment variable itself, the report and the mixed-process run are checked in
fresh subprocesses, since the variable is read once, at import.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import DTYPES, assert_close, run_python

import fastbp
from fastbp import bench, nn, optim, reference
from fastbp._kernels import _blas



def _available_routes():
    routes = ["scipy"]
    try:
        _blas._numpy_route()
        routes.insert(0, "numpy")
    except (LookupError, OSError):
        pass
    return routes


ROUTES = _available_routes()


@pytest.fixture(params=ROUTES)
def blas_route(request):
    """Runs the test with every GEMM on route `request.param`, then restores the import's."""
    before = _blas.route()["requested"]
    assert _blas._select(request.param)["route"] == request.param
    yield request.param
    _blas._select(before)


# (m, k, n): tiny, tall, wide, square-ish with odd sizes, a long inner dimension
GEMM_SHAPES = [(1, 1, 1), (257, 3, 2), (2, 5, 301), (7, 33, 5), (3, 1000, 4), (64, 130, 17)]


@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.75, 1.0), (-2.0, 0.9), (1.0, -0.5)])
def test_gemm_matches_reference(blas_route, rng, m, k, n, ta, tb, dtype, alpha, beta):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    expected = c.copy()
    reference.gemm(ta, tb, alpha, a, b, beta, expected)
    _blas.gemm(ta, tb, alpha, a, b, beta, c)
    assert_close(c, expected, dtype, scale=10 * np.sqrt(k))


def test_gemm_reads_read_only_operands(blas_route, rng):
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((6, 3))
    a.setflags(write=False)
    b.setflags(write=False)
    c = np.empty((4, 3))
    _blas.gemm(False, False, 1.0, a, b, 0.0, c)
    assert_close(c, a @ b, np.float64)


def test_gemm_beta_zero_ignores_nan_in_c(blas_route, rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    c = np.full((3, 2), np.nan)
    _blas.gemm(False, False, 1.0, a, b, 0.0, c)
    assert_close(c, a @ b, np.float64)


@pytest.mark.parametrize("beta,expected", [(0.0, 0.0), (1.0, 1.0), (2.0, 2.0)])
def test_gemm_empty_inner_dimension_scales_c(blas_route, beta, expected):
    c = np.ones((2, 3))
    _blas.gemm(False, False, 1.0, np.empty((2, 0)), np.empty((0, 3)), beta, c)
    np.testing.assert_array_equal(c, expected)


@pytest.mark.parametrize("m,n", [(0, 3), (3, 0), (0, 0)])
def test_gemm_empty_output_is_a_no_op(blas_route, m, n):
    a, b, c = np.ones((m, 4), np.float32), np.ones((4, n), np.float32), np.ones((m, n), np.float32)
    _blas.gemm(False, False, 1.0, a, b, 1.0, c)
    assert c.shape == (m, n)


def test_gemm_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="gemm"):
        _blas.gemm(False, False, 1.0, np.ones((2, 3)), np.ones((4, 2)), 0.0, np.ones((2, 2)))
    with pytest.raises(ValueError, match="c"):
        _blas.gemm(False, False, 1.0, np.ones((2, 3)), np.ones((3, 2)), 0.0, np.ones((3, 2)))


def test_routes_give_the_same_products(rng):
    """Both routes are OpenBLAS here: the same product to within a few ulps, per dtype."""
    if len(ROUTES) < 2:
        pytest.skip("only one BLAS route is available here")
    before = _blas.route()["requested"]
    a = rng.standard_normal((64, 784)).astype(np.float32)
    b = rng.standard_normal((784, 100)).astype(np.float32)
    out = {}
    try:
        for route in ROUTES:
            _blas._select(route)
            out[route] = np.empty((64, 100), np.float32)
            _blas.gemm(False, False, 1.0, a, b, 0.0, out[route])
    finally:
        _blas._select(before)
    assert_close(out["numpy"], out["scipy"], np.float32, scale=30)


def test_fused_step_trains_identically_on_every_route(blas_route):
    """The nogil one-call step runs through gemm_rm: same losses as the NumPy backend."""
    sizes = (12, 16, 16, 5)
    x, y, weights = bench.make_problem(sizes, 32, np.float64, seed=3)
    compiled = bench.fastbp_step(sizes, x, y, weights)
    checked = bench.numpy_backend_step(sizes, x, y, weights)
    for _ in range(5):
        np.testing.assert_allclose(compiled(), checked(), rtol=1e-10)


def test_unfused_layers_run_on_every_route(blas_route, rng):
    model = nn.MLP((6, 9, 3), dtype=np.float64)
    x, y = rng.standard_normal((8, 6)), rng.integers(0, 3, 8)
    loss = nn.SoftmaxCrossEntropy()
    first = loss.forward(model.forward(x), y)
    opt = optim.SGD(0.1)
    for _ in range(20):
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step(model.params, model.grads)
    assert loss.forward(model.forward(x), y) < 0.9 * first


def test_select_rejects_an_unknown_route():
    with pytest.raises(ValueError, match="FASTBP_BLAS must be one of"):
        _blas._select("mkl")


# ------------------------------------------------------------------------- locating NumPy's BLAS


def _info(path, api="openblas"):
    return dict(user_api="blas", internal_api=api, filepath=str(path))


def test_numpy_blas_file_picks_the_library_in_numpys_directories(tmp_path):
    libs = tmp_path / "numpy.libs"
    infos = [_info(tmp_path / "scipy.libs" / "libscipy_openblas.so"),
             _info(libs / "libscipy_openblas64_.so")]
    path, why = _blas.numpy_blas_file(infos, [tmp_path / "numpy", libs])
    assert (path, why) == (str((libs / "libscipy_openblas64_.so").resolve()), None)


def test_numpy_blas_file_says_why_not(tmp_path):
    infos = [_info(tmp_path / "scipy.libs" / "libscipy_openblas.so")]
    path, why = _blas.numpy_blas_file(infos, [tmp_path / "numpy"])
    assert path is None and "no BLAS in NumPy's own directories" in why
    assert "libscipy_openblas.so" in why
    mkl = [_info(tmp_path / "numpy" / "libmkl_rt.so", api="mkl")]
    path, why = _blas.numpy_blas_file(mkl, [tmp_path / "numpy"])
    assert path is None and "NumPy's BLAS is mkl" in why


# ---------------------------------------------------------------------------------- subprocesses


def _run(code, **env_vars):
    return run_python("-c", code, **env_vars)


REPORT = ("import json, fastbp; from fastbp import _config; from fastbp._kernels import _blas;"
          "print(json.dumps([_blas.route(), _config.config()['blas route']]))")


@pytest.mark.parametrize("route", ROUTES)
def test_environment_variable_forces_the_route_and_config_reports_it(route):
    proc = _run(REPORT, FASTBP_BLAS=route)
    assert proc.returncode == 0, proc.stderr
    info, line = json.loads(proc.stdout)
    assert info["route"] == route and info["requested"] == route
    assert info["reason"] == f"forced by FASTBP_BLAS={route}"
    assert line.startswith(f"{route}: ") and info["reason"] in line


def test_default_route_prefers_numpys_blas():
    proc = _run(REPORT, FASTBP_BLAS="")
    assert proc.returncode == 0, proc.stderr
    info, _ = json.loads(proc.stdout)
    assert info["requested"] == "auto" and info["route"] == ROUTES[0]
    if info["route"] == "numpy":
        assert "numpy.libs" in info["library"] or "numpy" in Path(info["library"]).parts
    else:
        assert info["reason"].startswith("fallback: NumPy's BLAS cannot be used (")


def test_a_bad_environment_value_is_a_clear_error():
    proc = _run("import fastbp", FASTBP_BLAS="mkl")
    assert proc.returncode != 0
    assert "ValueError: FASTBP_BLAS must be one of ('auto', 'numpy', 'scipy'), got 'mkl'" \
        in proc.stderr


def test_mixed_process_smoke():
    """A step after a NumPy matmul and a matmul after a step, in one process (no timing)."""
    code = (
        "import numpy as np; from fastbp import bench\n"
        "sizes = (784, 100, 10); x, y, w = bench.make_problem(sizes, 64)\n"
        "step = bench.fastbp_step(sizes, x, y, w); a = np.ones((256, 256), np.float32)\n"
        "losses = []\n"
        "for _ in range(5):\n"
        "    np.matmul(a, a); losses.append(float(step()))\n"
        "assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses\n"
        "assert (np.matmul(a, a) == 256).all()\n"
        "print('ok')\n")
    proc = _run(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_fastbp_brings_no_second_blas_into_the_process():
    """After ``import fastbp`` and training steps through every activation (compiled backend),
    the process holds the BLAS libraries NumPy loaded and no other: SciPy's OpenBLAS (loaded by
    scipy.special's ufuncs, among others) would be a second BLAS thread pool."""
    code = (
        "import json, numpy as np\n"
        "from threadpoolctl import threadpool_info\n"
        "def blas(): return sorted(i['filepath'] for i in threadpool_info()"
        " if i['user_api'] == 'blas')\n"
        "before = blas()\n"
        "import fastbp; from fastbp import _specs, nn, optim\n"
        "for name in _specs.ACTIVATIONS:\n"
        "    m = nn.MLP([4, 8, 3], activation=name)\n"
        "    m.train_step(np.ones((5, 4), np.float32), np.arange(5) % 3, m.criterion,"
        " optim.Adam())\n"
        "fastbp.show_config(open('/dev/null', 'w'))\n"
        "print(json.dumps([before, blas()]))\n")
    proc = _run(code, FASTBP_BLAS="")
    assert proc.returncode == 0, proc.stderr
    before, after = json.loads(proc.stdout)
    assert before and after == before
