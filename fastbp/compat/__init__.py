"""Drop-in replacements for course code whose API differs from :mod:`fastbp.layers`.

* :mod:`fastbp.compat.simple_ml` -- CMU 10-414/714 (Deep Learning Systems) hw0:
  ``from simple_ml import *`` becomes ``from fastbp.compat.simple_ml import *``.
"""

from . import simple_ml

__all__ = ["simple_ml"]
