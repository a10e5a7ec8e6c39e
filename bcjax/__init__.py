"""bcjax: a JAX/Flax trainer for BreakHis breast-cancer histopathology.

Kept import-light on purpose: `import bcjax.datasets.breakhis` must not pull in JAX.
"""

__version__ = "0.1.0"
