__version__ = "0.1.0"

from . import core as _core  # first of the package: its thread settings (core.steady_threads) must precede torch's start
