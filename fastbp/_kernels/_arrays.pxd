# cython: language_level=3
"""Argument checks for the elementwise kernels' entry points, through the NumPy C-API.

Why not typed memoryviews: acquiring a ``floating[::1]`` buffer costs ~0.3-0.5 us per argument
(PEP 3118 export, format-string parsing) plus the fused-type dispatch; measured here on empty
arrays, a call of the three-buffer relu_backward took ~0.85 us that way and ~0.08 us through
these checks, whose flags, type number and dimensions are plain struct reads.  Kernels take
C-contiguous ndarrays; the entry validates with the NumPy C-API.

The contract checked here, in this order, each failure naming the kernel and the argument:

* an ``numpy.ndarray`` (subclasses too): TypeError otherwise (lists, ``memoryview`` objects);
* of the call's dtype, native byte order: the FIRST array of a call fixes the dtype
  (:func:`float_type`: float32 or float64), every other array must have it (TypeError);
* 1-D (ValueError; the Python layer ravels N-d arrays, a view when they are C-contiguous);
* C-contiguous and aligned (ValueError);
* writeable when the kernel writes it (ValueError: an output must not be read-only);
* of length ``n`` when ``n >= 0`` (ValueError).

Each function returns what the kernel needs (the dtype, the data pointer), so an entry point
reads ``p = array_data(x, "relu_forward", "x", t, False, -1, None)`` once per buffer and never
touches the object again.  array_data takes any type number (NPY_INT64 for labels, say);
float_type is for the float kernels.  Modules that cimport this call ``cnp.import_array()`` at
import.
"""
cimport numpy as cnp

# flags every kernel buffer needs; outputs need NPY_ARRAY_WRITEABLE as well
cdef enum:
    _IN_FLAGS = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    _OUT_FLAGS = _IN_FLAGS | cnp.NPY_ARRAY_WRITEABLE


cdef inline int _not_ndarray(str kernel, str name, object a) except -1:
    raise TypeError(f"{kernel}: {name} must be a numpy.ndarray, got {type(a).__name__}")


cdef inline int float_type(object a, str kernel, str name) except -1:
    """The dtype of a call (NPY_FLOAT32 or NPY_FLOAT64), read from its first array `a`."""
    if not cnp.PyArray_Check(a):
        _not_ndarray(kernel, name, a)
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef int t = cnp.PyArray_TYPE(arr)
    if (t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64) or not cnp.PyArray_ISNOTSWAPPED(arr):
        raise TypeError(
            f"{kernel}: {name} must be a float32 or float64 array, got dtype {a.dtype}"
        )
    return t


cdef inline int _layout_error(str kernel, str name, cnp.ndarray a, int need) except -1:
    """Raise the ValueError saying which of `need`'s flags `a` lacks."""
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(
            f"{kernel}: {name} must be C-contiguous, got strides {(<object>a).strides}"
        )
    if not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{kernel}: {name} must be aligned to its dtype")
    if need & cnp.NPY_ARRAY_WRITEABLE:
        raise ValueError(f"{kernel}: {name} is read-only, but the kernel writes it")
    raise AssertionError("unreachable")


cdef inline cnp.ndarray _typed(object a, str kernel, str name, int typenum):
    """`a` as an ndarray of type `typenum` in native byte order (TypeError otherwise)."""
    if not cnp.PyArray_Check(a):
        _not_ndarray(kernel, name, a)
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != typenum or not cnp.PyArray_ISNOTSWAPPED(arr):
        raise TypeError(
            f"{kernel}: {name} has dtype {a.dtype}, but this call computes in "
            f"{cnp.PyArray_DescrFromType(typenum)} "
            f"(every array of a call has the dtype of the first)"
        )
    return arr


cdef inline int _check_layout(cnp.ndarray arr, str kernel, str name, bint writeable) except -1:
    """C-contiguous and aligned, and writeable when the kernel writes it (ValueError)."""
    cdef int need = _OUT_FLAGS if writeable else _IN_FLAGS
    if (cnp.PyArray_FLAGS(arr) & need) != need:
        _layout_error(kernel, name, arr, need)
    return 0


cdef inline int check_array(object a, str kernel, str name, int typenum,
                            bint writeable) except -1:
    """Check `a` as above for any number of dimensions (no 1-D or length check)."""
    _check_layout(_typed(a, kernel, name, typenum), kernel, name, writeable)
    return 0


cdef inline char *array_data(object a, str kernel, str name, int typenum, bint writeable,
                             Py_ssize_t n, str sized_by) except? NULL:
    """The data pointer of `a`, checked as above: `typenum` is the call's dtype, `writeable`
    says the kernel writes `a`, and n >= 0 is the length `a` must have (that of the array
    named `sized_by`); n < 0 skips the length check.

    NULL is returned only for an array whose data pointer is NULL, which NumPy does not make
    (it allocates at least one byte even for empty arrays); the kernels read nothing then.
    """
    cdef cnp.ndarray arr = _typed(a, kernel, name, typenum)
    if cnp.PyArray_NDIM(arr) != 1:
        raise ValueError(
            f"{kernel}: {name} must be 1-D (the caller ravels), got shape {a.shape}"
        )
    _check_layout(arr, kernel, name, writeable)
    if n >= 0 and cnp.PyArray_DIM(arr, 0) != n:
        raise ValueError(f"{kernel}: {name} has length {cnp.PyArray_DIM(arr, 0)}, expected {n} "
                         f"(the length of {sized_by})")
    return cnp.PyArray_BYTES(arr)


cdef inline char *matrix_data(object a, str kernel, str name, int typenum, bint writeable,
                              Py_ssize_t rows, Py_ssize_t cols) except? NULL:
    """The data pointer of a 2-D `a`, checked as array_data is (the dtype of the call, C order,
    writeable when written), with shape (rows, cols); a negative rows or cols is not checked.
    None gives NULL (an optional buffer); the caller decides whether None is allowed."""
    if a is None:
        return NULL
    cdef cnp.ndarray arr = _typed(a, kernel, name, typenum)
    if cnp.PyArray_NDIM(arr) != 2:
        raise ValueError(f"{kernel}: {name} must be 2-D, got shape {a.shape}")
    _check_layout(arr, kernel, name, writeable)
    cdef Py_ssize_t r = cnp.PyArray_DIM(arr, 0), c = cnp.PyArray_DIM(arr, 1)
    if (rows >= 0 and r != rows) or (cols >= 0 and c != cols):
        raise ValueError(f"{kernel}: {name} has shape {(r, c)}, expected "
                         f"{(rows if rows >= 0 else r, cols if cols >= 0 else c)}")
    return cnp.PyArray_BYTES(arr)


cdef inline char *vector_data(object a, str kernel, str name, int typenum, bint writeable,
                              Py_ssize_t n, str sized_by) except? NULL:
    """array_data for an optional 1-D buffer of length n: None gives NULL."""
    if a is None:
        return NULL
    return array_data(a, kernel, name, typenum, writeable, n, sized_by)


cdef struct Affine:
    # the checked arguments of an affine forward out := x·w (+ b): pointers and sizes
    const char *x
    const char *w
    const char *b      # NULL without a bias
    char *out
    Py_ssize_t n, d, m


cdef inline int affine_arrays(str kernel, object x, object w, object b, object out,
                              Affine *a) except -1:
    """Check x (N, D), w (D, M), b (M,) or None and out (N, M) as matrix_data / vector_data do,
    fill `a`, and return the call's dtype (x's)."""
    cdef int t = float_type(x, kernel, "x")
    a.x = matrix_data(x, kernel, "x", t, False, -1, -1)
    a.n, a.d = (<cnp.ndarray>x).shape[0], (<cnp.ndarray>x).shape[1]
    a.w = matrix_data(w, kernel, "w", t, False, a.d, -1)
    a.m = (<cnp.ndarray>w).shape[1]
    a.b = vector_data(b, kernel, "b", t, False, a.m, "w's columns")
    a.out = matrix_data(out, kernel, "out", t, True, a.n, a.m)
    return t


cdef inline int check_threads(str kernel, int n_threads) except -1:
    """ValueError unless n_threads >= 1 (prange(num_threads=0) is not "serial")."""
    if n_threads < 1:
        raise ValueError(f"{kernel}: n_threads must be >= 1, got {n_threads}")
    return 0


cdef inline Py_ssize_t length(object a) noexcept:
    """The length of a 1-D array already checked by array_data."""
    return cnp.PyArray_DIM(<cnp.ndarray>a, 0)
