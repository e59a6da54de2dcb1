"""A miniature of a vectorized multi-stream training step, checked by esper-lifetimes.

The example's code is in the package, ``python/esper_lifetimes/examples/vectorized_step.py``
(``esper_lifetimes.examples.vectorized_step``), so that ``esper-lifetimes demo`` can run
it from an installed copy; this file runs it:

    python examples/vectorized_step.py            # the step as shipped, then corrected
    python examples/vectorized_step.py --buggy    # only the step as shipped
    python examples/vectorized_step.py --fixed    # only the corrected step
    python examples/vectorized_step.py --virtual  # virtual streams even on a GPU
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from esper_lifetimes.examples.vectorized_step import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
