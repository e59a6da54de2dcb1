"""esper-lifetimes: finds CUDA stream lifetime hazards in PyTorch programs at run time.

The engine (`Engine`, `Hazard`) is the Rust happens-before core; see docs/ENGINE-API.md.
"""

from esper_lifetimes import ops
from esper_lifetimes._core import (
    Engine,
    Hazard,
    InvalidArgumentError,
    LifetimesError,
    UnknownStorageError,
)

__version__ = "0.1.0"

__all__ = [
    "Engine",
    "Hazard",
    "InvalidArgumentError",
    "LifetimesError",
    "UnknownStorageError",
    "ops",
]
