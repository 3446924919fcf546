"""THE tables: one row per activation and per loss; everything else derives from them.

What derives from these rows (and is tested to, in tests/test_specs.py, so a forgotten piece
fails a test instead of silently going slow):

* the kernel names ``<name>_forward`` / ``<name>_backward`` (fastbp._kernels and its NumPy twin
  fastbp.reference), the course functions in fastbp.layers and ``layers.ACTIVATIONS``;
* the layer classes of fastbp.nn (``nn_class``; each class carries its row as ``spec``) and
  ``nn.ACTIVATIONS`` / ``nn.LOSSES``;
* the fused kernels' activation codes (:data:`FUSED_ACTIVATIONS`, the reference's and the
  compiled ones) and which of them read the pre-activation (:data:`FUSED_FROM_INPUT`);
* the fusion planner (fastbp._planner), which asks a row how a layer with a given parameter
  value fuses (:meth:`Activation.fused`), and the compiled step's loss codes;
* the CLI's ``--activation`` / ``--loss`` choices, the kernel benchmarks and the test grids.

Adding an activation: its scalar math in ``_kernels/_activation_math.pxd``, its row here, its
NumPy twin in ``reference/activations.py``, its course functions in ``layers.py``, its class in
``nn.py`` and its function in ``autograd/functions.py`` (exported by ``autograd/__init__.py``),
all one-liners over shared helpers, and its README line.

This module imports nothing from fastbp: everything above may import it.
"""

from typing import Callable, NamedTuple, Optional


class FusedActivation(NamedTuple):
    """How an activation runs inside the fused kernels (``linear_act_forward`` & co)."""

    code: str            #: the fused kernels' code, internal: "relu", "gelu_tanh" (form_code)
    alpha: float         #: the scalar the fused kernels take (0.0 when the code needs none)
    reads_input: bool    #: backward reads the pre-activation z (stored in ``pre``), not a


class Activation(NamedTuple):
    """One activation: everything a kernel, a layer, a planner or a test needs to know."""

    name: str                    #: kernel / layers / nn.ACTIVATIONS / CLI name
    nn_class: str                #: its class in fastbp.nn
    param: Optional[str] = None  #: its one parameter ("alpha", "approximate") or None
    default: object = None       #: the parameter's default
    #: for a parameter that picks a form: its values, default first -- the one vocabulary of
    #: the kernels, their NumPy twins, layers, nn, autograd and the model files
    forms: tuple = ()
    backward_reads: str = "input"  #: what the elementwise backward reads: "input" x / "output" y
    fused_reads: str = "output"  #: what the fused backward reads: the "output" a or "input" z
    #: for a real parameter: when the fused backward may read the output (else: no fusion)
    output_form_valid: Optional[Callable[[float], bool]] = None
    #: the scalar helper (_activation_math.pxd) of the fused backward from the output, when it
    #: is not the elementwise ``<code>_bwd``
    output_backward: Optional[str] = None
    forward_math: str = ""   #: the kernels' docstrings: ``out := <forward_math>.``
    backward_math: str = ""  #: ``dx := <backward_math>, from the forward input x / OUTPUT y.``
    backward_note: str = ""  #: appended to the backward docstring

    @property
    def fused_codes(self):
        """The fused kernels' codes of this activation: its name, or one per form."""
        return tuple(self.form_code(form) for form in self.forms) or (self.name,)

    @property
    def kernel_param(self):
        """The elementwise kernels' parameter with its default: ``"double alpha=0.01"``,
        ``"approximate='none'"`` (a form, by its public name) or None."""
        if self.param is None:
            return None
        if self.forms:
            return f"{self.param}={self.default!r}"
        return f"double {self.param}={self.default!r}"

    @property
    def forms_text(self):
        """The allowed forms as an error message lists them: ``"'none' or 'tanh'"``."""
        return " or ".join(map(repr, self.forms))

    @property
    def takes_alpha(self):
        """True when the scalar helpers take the parameter (a real one) as ``alpha``."""
        return self.param is not None and not self.forms

    def checked_form(self, value, where=""):
        """`value` when it is one of the row's forms, else a ValueError naming the parameter
        (after `where`, e.g. ``"gelu_forward: "``).  The compiled kernels, which import nothing
        from Python, raise the same message, rendered from this row (_activations.pyx.tp)."""
        if isinstance(value, str) and value in self.forms:
            return value
        raise ValueError(f"{where}{self.param} must be {self.forms_text}, got {value!r}")

    def form_code(self, form):
        """The fused code of `form`: the name for the default form, else "<name>_<form>"."""
        return self.name if form == self.default else f"{self.name}_{form}"

    def kernel_scalars(self, value):
        """The elementwise kernels' extra arguments for parameter `value` (already checked):
        the value itself (a real alpha, or a form by its public name), or none."""
        return () if self.param is None else (value,)

    def fused(self, value=None):
        """The :class:`FusedActivation` for parameter `value`, or None when it cannot fuse."""
        reads_input = self.fused_reads == "input"
        if self.forms:
            return FusedActivation(self.form_code(self.checked_form(value)), 0.0, reads_input)
        if self.param is None:
            return FusedActivation(self.name, 0.0, reads_input)
        if self.output_form_valid is not None and not self.output_form_valid(value):
            return None
        return FusedActivation(self.name, float(value), reads_input)


def _nonnegative(alpha):
    # a > 0 exactly where z > 0 (and elu'(z) = a + alpha for z <= 0) only when alpha >= 0
    return alpha >= 0


#: name -> row, in the order of the fused kernels' codes (after "identity")
ACTIVATIONS = {row.name: row for row in (
    Activation("relu", "ReLU", forward_math="max(x, 0)  (NaN propagates)",
               backward_math="dout * (x > 0)", backward_note=" (derivative 0 at x = 0)"),
    Activation("leaky_relu", "LeakyReLU", "alpha", 0.01, output_form_valid=_nonnegative,
               forward_math="x if x > 0 else alpha * x",
               backward_math="dout if x > 0 else alpha * dout"),
    Activation("sigmoid", "Sigmoid", backward_reads="output",
               forward_math="1 / (1 + exp(-x))  (stable for both signs)",
               backward_math="dout * y * (1 - y)"),
    Activation("tanh", "Tanh", backward_reads="output", forward_math="tanh(x)",
               backward_math="dout * (1 - y**2)"),
    Activation("elu", "ELU", "alpha", 1.0, output_form_valid=_nonnegative,
               output_backward="elu_bwd_from_output",
               forward_math="x if x > 0 else alpha * expm1(x)",
               backward_math="dout if x > 0 else dout * alpha * exp(x)"),
    Activation("gelu", "GELU", "approximate", "none", forms=("none", "tanh"),
               fused_reads="input",
               forward_math="x * Phi(x); approximate='tanh': 0.5 * x * (1 + tanh(sqrt(2/pi) "
                            "* (x + 0.044715 x**3)))",
               backward_math="dout * (Phi(x) + x * phi(x)) (or the tanh form's "
                             "derivative)"),
)}

#: the fused kernels' activation codes, in enum order ("identity" = no activation)
FUSED_ACTIVATIONS = ("identity",) + tuple(
    code for row in ACTIVATIONS.values() for code in row.fused_codes)
#: the fused codes whose backward reads the pre-activation z (their forward stores it)
FUSED_FROM_INPUT = tuple(
    code for row in ACTIVATIONS.values() if row.fused_reads == "input"
    for code in row.fused_codes)


class Loss(NamedTuple):
    """One loss: its names in every layer of the house."""

    name: str       #: nn.LOSSES / MLP(loss=...) / CLI name
    kernel: str     #: the fused loss + gradient kernel (fastbp._kernels / fastbp.reference)
    layer: str      #: the course function in fastbp.layers (the public drop-in name)
    nn_class: str   #: its class in fastbp.nn
    kind: str       #: "classification" (integer labels) or "regression" (a target array)


#: name -> row, in the order of the compiled step's loss codes
LOSSES = {row.name: row for row in (
    Loss("softmax", "softmax_cross_entropy", "softmax_loss", "SoftmaxCrossEntropy",
         "classification"),
    Loss("svm", "svm_hinge", "svm_loss", "MulticlassHinge", "classification"),
    Loss("mse", "mse", "mse_loss", "MSELoss", "regression"),
)}

#: the compiled step's loss codes, by kernel name
LOSS_CODES = {row.kernel: code for code, row in enumerate(LOSSES.values())}
#: what the CLI trains with (classification only: it reports accuracy)
CLASSIFICATION_LOSSES = tuple(n for n, row in LOSSES.items() if row.kind == "classification")

#: fused code -> (its row, the form it stands for; None for rows without forms)
FUSED_FORMS = {row.form_code(form) if row.forms else row.name: (row, form if row.forms else None)
               for row in ACTIVATIONS.values() for form in (row.forms or (None,))}
