"""An XLA:CPU setting applied before JAX starts: convolutions off YNNPACK.

train.py and the benchmark both apply it. In jaxlib 0.10, XLA:CPU hands each convolution to
YNNPACK, which ran on one of this machine's two cores: the default CNN's step took 47-54 ms. With
convolutions left to XLA's own emitter it takes 30-33 ms (measured in separate processes, chunks
of 1, 2 and 10 steps; compile times unchanged). The flag is experimental and an unknown flag stops
XLA at start-up, so it is set only for the jaxlib series it was measured on, and never over a
value the user chose.
"""

from __future__ import annotations

import os
from importlib import metadata

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
MEASURED_SERIES = ("0.10.",)


def prefer_xla_convolutions(environ=os.environ) -> bool:
    """Append FLAG to XLA_FLAGS; returns whether it was added.

    Call it before JAX's first computation.
    """
    flags = environ.get("XLA_FLAGS", "")
    if "ynn_fusion_type" in flags:  # the user's own choice wins
        return False
    try:
        jaxlib_version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return False
    if not jaxlib_version.startswith(MEASURED_SERIES):
        return False
    environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    return True
