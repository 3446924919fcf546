"""fastbp._specs: every row of the tables has every piece it needs, and what derives from the
tables agrees with them.  A row added without its kernels, twin, layer functions, nn class or
fused code fails here instead of silently taking a slow path.
"""

import argparse
import inspect

import numpy as np
import pytest

from fastbp import _kernels, _specs, cli, layers, nn, reference
from fastbp._kernels import _fused, _step
from fastbp.reference import fused as ref_fused

ROWS = list(_specs.ACTIVATIONS.values())
LOSS_ROWS = list(_specs.LOSSES.values())


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_activation_row_has_kernels_twin_layers_and_class(row):
    for part in ("forward", "backward"):
        name = f"{row.name}_{part}"
        assert name in _kernels.KERNELS and name in reference.KERNELS
        assert callable(getattr(layers, name))
    fwd, bwd, param, default = layers.ACTIVATIONS[row.name]
    assert (fwd.__name__, bwd.__name__, param, default) == (
        f"{row.name}_forward", f"{row.name}_backward", row.param, row.default)
    if row.param is not None:  # the public default is the table's
        assert inspect.signature(fwd).parameters[row.param].default == row.default
    cls = nn.ACTIVATIONS[row.name]
    assert cls.__name__ == row.nn_class and cls.spec is row
    assert cls().kernel == row.name


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_activation_row_fuses(row):
    """Every form of every row fuses at its default parameter: no silent slow path."""
    values = row.forms or (row.default,)
    for value in values:
        kw = {} if row.param is None else {row.param: value}
        act = nn.ACTIVATIONS[row.name](**kw)
        fused = act.fused_activation
        assert fused is not None and fused.code in _fused.ACTIVATION_CODES
        model = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 2))
        assert model._fusion_plan() is not None


def test_fused_codes_agree_with_the_table():
    codes = {code: i for i, code in enumerate(_specs.FUSED_ACTIVATIONS)}
    assert _fused.ACTIVATION_CODES == ref_fused.ACTIVATION_CODES == codes
    assert _fused.DIFFERENTIATED_FROM_INPUT == ref_fused.DIFFERENTIATED_FROM_INPUT \
        == _specs.FUSED_FROM_INPUT
    output_rows = {r.name for r in ROWS if r.fused_reads == "output"}
    assert set(ref_fused.OUTPUT_DERIVATIVES) == output_rows


@pytest.mark.parametrize("row", LOSS_ROWS, ids=lambda r: r.name)
def test_loss_row_has_kernel_twin_layer_and_class(row):
    assert row.kernel in _kernels.KERNELS and row.kernel in reference.KERNELS
    assert callable(getattr(layers, row.layer))
    cls = nn.LOSSES[row.name]
    assert cls.__name__ == row.nn_class and cls.spec is row and cls().kernel == row.kernel
    assert row.kind in ("classification", "regression")


def test_loss_codes_agree_with_the_compiled_step():
    assert _step.LOSS_KINDS == _specs.LOSS_CODES


def _choices(parser, dest):
    """The choices of option `dest` in `parser` or any of its sub-commands."""
    for action in parser._actions:
        if action.dest == dest:
            return action.choices
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found = _choices(sub, dest)
                if found is not None:
                    return found
    return None


def test_cli_choices_come_from_the_registries():
    from fastbp.backend import BACKENDS

    parser = cli.build_parser()
    assert list(_choices(parser, "activation")) == sorted(_specs.ACTIVATIONS)
    assert tuple(_choices(parser, "loss")) == _specs.CLASSIFICATION_LOSSES
    assert tuple(_choices(parser, "backend")) == BACKENDS


def test_forms_and_conditions():
    gelu, leaky = _specs.ACTIVATIONS["gelu"], _specs.ACTIVATIONS["leaky_relu"]
    assert gelu.fused("tanh") == _specs.FusedActivation("gelu_tanh", 0.0, True)
    assert gelu.kernel_scalars("tanh") == ("tanh",) and gelu.kernel_scalars("none") == ("none",)
    assert gelu.kernel_param == "approximate='none'" and gelu.checked_form("tanh") == "tanh"
    for bad in ("fast", True, False, None, "TANH"):
        with pytest.raises(ValueError, match=r"^gelu: approximate must be 'none' or 'tanh', "):
            gelu.checked_form(bad, "gelu: ")
    with pytest.raises(ValueError, match="approximate must be"):
        gelu.fused("fast")
    assert leaky.fused(0.2) == _specs.FusedActivation("leaky_relu", 0.2, False)
    assert leaky.fused(-0.5) is None  # the output form needs alpha >= 0
    assert np.dtype(type(leaky.fused(1).alpha)) == np.float64



def _fastbp_imports(module):
    """The fastbp modules `module` imports (relative imports resolved), at any depth."""
    import ast
    import importlib.util

    # the source is read, not imported: a module of an optional extra (mpi4py) may not import
    origin = importlib.util.find_spec(module).origin
    package = module if origin.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(origin).read())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            name = f"{base}.{node.module}" if node.level and node.module else (
                base if node.level else node.module)
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {n for n in found if n.startswith("fastbp")}


@pytest.mark.parametrize("module,forbidden", [
    ("fastbp._specs", ("fastbp",)),
    ("fastbp._planner", ("fastbp.nn", "fastbp.optim", "fastbp.layers", "fastbp.models")),
    ("fastbp.nn", ("fastbp.layers", "fastbp.models", "fastbp.cli", "fastbp.io")),
    ("fastbp.training", ("fastbp.cli",)),
    ("fastbp.plot", ("fastbp",)),
    ("fastbp.reference.fused", ("fastbp._kernels",)),
    ("fastbp.optim", ("fastbp.autograd", "fastbp.nn", "fastbp.layers")),
    ("fastbp.autograd.functions", ("fastbp.nn", "fastbp.models", "fastbp.cli", "fastbp.layers")),
    ("fastbp.sklearn", ("fastbp.cli", "fastbp.distributed")),
    ("fastbp.distributed", ("fastbp.cli", "fastbp.sklearn")),
])
def test_imports_flow_one_way(module, forbidden):
    bad = sorted(n for n in _fastbp_imports(module) for f in forbidden
                 if n == f or n.startswith(f + "."))
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("name", sorted(_specs.ACTIVATIONS))
def test_every_activation_is_an_autograd_function(name):
    """A row without its fastbp.autograd function fails here."""
    from fastbp import autograd

    x = autograd.Tensor(np.array([[-1.5, 0.0, 2.0]]), requires_grad=True)
    y = getattr(autograd, name)(x)
    y.sum().backward()
    assert x.grad.shape == (1, 3) and np.isfinite(x.grad).all()
