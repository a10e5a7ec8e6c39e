"""The BreakHis vocabulary without TFDS: `breakhis/breakhis_common.py`, loaded as a module of its own.

Importing it through `bcjax.datasets.breakhis` would run that package's `__init__`, which registers
the TFDS builder and so imports tensorflow_datasets; the model, step and benchmark code must not pay
for (or need) the data stack. The file stays inside the builder package, which must stand alone.
"""

import importlib.util
import pathlib
import sys

_SOURCE = pathlib.Path(__file__).with_name("breakhis") / "breakhis_common.py"
_spec = importlib.util.spec_from_file_location(__name__, _SOURCE)
_module = importlib.util.module_from_spec(_spec)
sys.modules[__name__] = _module  # this module is that file
_spec.loader.exec_module(_module)
