"""Whole-model files: an MLP's parameters plus the metadata that rebuilds its architecture.

Format
------
An ordinary ``.npz`` archive (a zip of ``.npy`` files, no pickle anywhere):

* the parameters, written by :meth:`fastbp.nn.Sequential.save` (``"0.W"``, ``"0.b"``,
  ``"2.W"``, ... as in ``state_dict``), so the parameter layout has one owner;
* one more entry, :data:`META_KEY`, a 1-element unicode array holding a JSON object::

    {"format": "fastbp.MLP", "version": 1,
     "architecture": {"sizes": [64, 256, 10], "activation": "relu", "activation_kwargs": {},
                      "loss": "softmax", "bias": true, "dtype": "float32"},
     ...}                      # any further keys the caller passed (the CLI stores its options)

``np.load(path, allow_pickle=False)`` reads every entry.  ``MLP.load`` alone would refuse such a
file (it does not know :data:`META_KEY`); use :func:`load_model`, which rebuilds the network from
the metadata and then loads the parameters.
"""

import inspect
import json
import os
import tempfile
import zipfile
from io import BytesIO

import numpy as np

from . import nn
from ._npz import read_arrays

__all__ = ["META_KEY", "FORMAT", "architecture", "load_model", "save_model"]

#: Name of the metadata entry inside the archive.
META_KEY = "__fastbp_meta__"
#: ``(format name, version)`` written by :func:`save_model`.
FORMAT = ("fastbp.MLP", 1)
_RESERVED = ("format", "version", "architecture")
#: Deepest nesting of lists / objects accepted in the metadata (a tampered file could nest
#: deeper than Python's recursion limit, which every later repr or comparison would hit).
MAX_META_DEPTH = 32


def architecture(model):
    """What :func:`load_model` needs to rebuild `model`, as a JSON-ready dict.

    Parameters
    ----------
    model : fastbp.nn.MLP

    Returns
    -------
    dict
        ``sizes`` (list of int), ``activation`` (a key of ``nn.ACTIVATIONS``),
        ``activation_kwargs`` (the activation's constructor arguments, e.g. ``{"alpha": 0.1}``),
        ``loss`` (a key of ``nn.LOSSES``), ``bias`` (bool), ``dtype`` (``"float32"`` or
        ``"float64"``) and ``norm`` (a key of ``nn.NORMS`` or None; files without it load with
        None).

    Raises
    ------
    TypeError
        If `model` is not an MLP or its criterion is not one of ``nn.LOSSES``.
    """
    if not isinstance(model, nn.MLP):
        raise TypeError(f"save_model needs a fastbp.nn.MLP (its architecture is rebuilt from "
                        f"sizes), got {type(model).__name__}")
    loss = next((name for name, cls in nn.LOSSES.items() if type(model.criterion) is cls), None)
    if loss is None:
        raise TypeError(f"the model's criterion {model.criterion!r} is not one of nn.LOSSES")
    act_cls = nn.ACTIVATIONS[model.activation]
    act = next((layer for layer in model.layers if type(layer) is act_cls), None)
    # activations keep each constructor argument as an attribute of the same name
    kwargs = {} if act is None else {
        name: getattr(act, name) for name in inspect.signature(act_cls).parameters
    }
    return {
        "sizes": [int(s) for s in model.sizes],
        "activation": model.activation,
        "activation_kwargs": kwargs,
        "loss": loss,
        "bias": "b" in model.layers[0].params,
        "dtype": model.dtype.name,
        "norm": model.norm,
    }


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"metadata value {value!r} ({type(value).__name__}) is not JSON-serialisable")


def save_model(path, model, meta=None):
    """Write `model`'s parameters and architecture (and `meta`) to one ``.npz`` file.

    The file is written to a temporary name in the same directory and renamed into place, so an
    interrupted save never leaves a half-written model at `path`.  Unlike ``np.savez``, no
    ``.npz`` suffix is appended: the file is written exactly at `path`.

    Parameters
    ----------
    path : str or os.PathLike
    model : fastbp.nn.MLP
    meta : dict, optional
        Extra JSON-serialisable information stored beside the architecture (NumPy scalars are
        converted).  The keys ``"format"``, ``"version"`` and ``"architecture"`` are reserved.

    Raises
    ------
    TypeError
        If `model` is not an MLP, or `meta` is not a dict of JSON-serialisable values.
    ValueError
        If `meta` uses a reserved key.
    OSError
        If the file cannot be written (e.g. the directory does not exist).
    """
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    reserved = [k for k in _RESERVED if k in meta]
    if reserved:
        raise ValueError(f"meta may not use the reserved keys {reserved}")
    record = {"format": FORMAT[0], "version": FORMAT[1], "architecture": architecture(model),
              **meta}
    text = np.array([json.dumps(record, default=_json_default)])

    buf = BytesIO()
    model.save(buf)
    with zipfile.ZipFile(buf, "a") as archive, archive.open(META_KEY + ".npy", "w") as member:
        np.lib.format.write_array(member, text, allow_pickle=False)

    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".fastbp-", suffix=".npz",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getbuffer())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_model(path):
    """Rebuild an MLP written by :func:`save_model`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    model : fastbp.nn.MLP
        The network, with the saved parameters, dtype, activation and loss (as criterion).
    meta : dict
        The whole metadata record: ``format``, ``version``, ``architecture`` and whatever extra
        keys were saved.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the file is not a readable ``.npz``, has no fastbp metadata (e.g. it was written by
        ``Sequential.save`` alone), has an unknown format or version, metadata that does not
        describe a valid MLP, or parameters that do not match it.  The message starts with
        `path`.  Everything is checked against the stored arrays before the network is built,
        so a tampered file never makes this allocate more than the file holds.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: model file not found")
    if not _is_zip(path):
        raise ValueError(f"{path}: not an .npz model file (not a zip archive)")
    arrays = read_arrays(path)
    if META_KEY not in arrays:
        raise ValueError(f"{path}: no fastbp metadata ({META_KEY!r}); it holds only parameters "
                         "(load those into a model you build with MLP(...).load(path))")
    meta = _read_meta(path, arrays.pop(META_KEY))
    arch = meta["architecture"]
    try:
        _check_architecture(arch, arrays)
        model = nn.MLP(arch["sizes"], activation=arch["activation"], loss=arch["loss"],
                       bias=arch["bias"], dtype=arch["dtype"], norm=arch.get("norm"),
                       **arch["activation_kwargs"])
        model.load_state_dict(arrays)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: the parameters or metadata do not describe a valid MLP "
                         f"({type(e).__name__}: {e})") from None
    return model, meta


def _is_zip(path):
    """zipfile.is_zipfile, which itself raises BadZipFile on some broken end records (fuzz/)."""
    try:
        return zipfile.is_zipfile(path)
    except zipfile.BadZipFile:
        return False


#: architecture key -> (the JSON type it must have, what to call it in an error)
_ARCH_TYPES = {"sizes": (list, "a list"), "activation": (str, "a string"),
               "activation_kwargs": (dict, "an object"), "loss": (str, "a string"),
               "bias": (bool, "true or false"), "dtype": (str, "a string")}


def _norm_arrays(norm):
    """The array names one hidden normalization layer stores (its params and buffers)."""
    if norm is None:
        return ()
    layer = nn.NORMS[norm](1)
    return (*layer.params, *getattr(layer, "buffers", {}))


def _check_architecture(arch, arrays):
    """Raise ValueError unless `arch` is well formed and describes exactly `arrays`.

    Runs before the MLP is built, so tampered sizes never allocate anything: every weight
    shape must equal a stored array's (the layout ``Sequential.state_dict`` writes for an
    MLP: ``Linear`` layers, each hidden one followed by its norm layer when there is one and its
    activation).
    """
    keys = set(arch) - {"norm"}  # "norm" is optional: files written before it load with None
    if keys != set(_ARCH_TYPES):
        raise ValueError(f"architecture has keys {sorted(arch)}, expected {sorted(_ARCH_TYPES)} "
                         "and optionally 'norm'")
    for key, (kind, what) in _ARCH_TYPES.items():
        if not isinstance(arch[key], kind):
            raise ValueError(f"architecture {key!r} must be {what}, got {arch[key]!r:.80}")
    sizes = arch["sizes"]
    if len(sizes) < 2 or not all(type(s) is int and s >= 1 for s in sizes):
        raise ValueError(f"sizes must be at least two integers >= 1, got {sizes!r:.80}")
    if arch["dtype"] not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {arch['dtype']!r:.80}")
    norm = arch.get("norm")
    if norm is not None and (not isinstance(norm, str) or norm not in nn.NORMS):
        raise ValueError(f"norm must be null or one of {sorted(nn.NORMS)}, got {norm!r:.80}")
    norm_names = _norm_arrays(norm)
    stride = 3 if norm_names else 2  # Linear [, norm], activation
    expected = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        expected[f"{stride * i}.W"] = (fan_in, fan_out)
        if arch["bias"]:
            expected[f"{stride * i}.b"] = (fan_out,)
        if i < len(sizes) - 2:
            expected.update({f"{stride * i + 1}.{name}": (fan_out,) for name in norm_names})
    missing, extra = sorted(expected.keys() - arrays.keys()), sorted(arrays.keys() - expected)
    if missing or extra:
        raise ValueError(f"the arrays do not match the sizes {sizes}: missing "
                         f"{missing or 'nothing'}, unexpected {extra or 'nothing'}")
    for key, shape in expected.items():
        if arrays[key].shape != shape or arrays[key].dtype != arch["dtype"]:
            raise ValueError(f"array {key!r} is {arrays[key].dtype} {arrays[key].shape}, the "
                             f"architecture says {arch['dtype']} {shape}")


def _read_meta(path, entry):
    """The metadata dict from the archive's META_KEY entry, after checking its form."""
    if entry.dtype.kind != "U" or entry.shape != (1,):
        raise ValueError(f"{path}: {META_KEY!r} must be a 1-element string array, got "
                         f"{entry.dtype} {entry.shape}")
    try:
        meta = json.loads(str(entry[0]))
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: {META_KEY!r} is not valid JSON ({e})") from None
    if _depth(meta) > MAX_META_DEPTH:
        raise ValueError(f"{path}: {META_KEY!r} is nested more than {MAX_META_DEPTH} levels deep")
    if not isinstance(meta, dict) or (meta.get("format"), meta.get("version")) != FORMAT:
        got = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else meta
        raise ValueError(f"{path}: unsupported model format {got}; this fastbp reads {FORMAT}")
    if not isinstance(meta.get("architecture"), dict):
        raise ValueError(f"{path}: metadata has no 'architecture' object")
    return meta


def _depth(value):
    """How deeply JSON lists / objects nest in `value` (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(value, (list, dict)) and depth <= MAX_META_DEPTH:
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict)
                                                   else value))
    return deepest
