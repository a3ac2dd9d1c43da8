"""A whisperkit backend that implements one op, GELU; every other op falls back to the NumPy reference."""
import math

import numpy as np

import whisperkit

# math.erfc on every element, in float64.  A real backend would use Numba, C, SIMD...: this one shows the shape.
_erfc = np.frompyfunc(math.erfc, 1, 1)


class GeluExample(whisperkit.Backend):
    name = "gelu_example"
    version = "1.0"
    description = "example plugin: exact GELU through math.erfc"

    def gelu(self, x):
        # gelu(x) = x * Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2: exact in both tails, no overflow up to 3e38
        x64 = np.asarray(x, dtype=np.float64)
        phi = 0.5 * np.asarray(_erfc(-x64 * math.sqrt(0.5)), dtype=np.float64)
        return np.asarray(x64 * phi, dtype=np.float32)


@whisperkit.hookimpl
def whisperkit_backends():
    return [GeluExample()]
