"""The power of one frequency in a block of samples: the Goertzel algorithm (pure).

Goertzel computes one DFT bin with a second-order recurrence (Goertzel 1958), O(N) per
frequency, which beats an FFT when only the eight DTMF frequencies matter. The frequency
need not fall on a bin of the block length: the coefficient is computed for the exact
frequency. Powers are normalised so that a sine of amplitude `a` (a fraction of full scale
when the samples are in [-1, 1)) reads about a², whatever the block's length: thresholds
can then be written as levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def goertzel_power(samples: Sequence[float], hz: float, rate: int) -> float:
    """Normalised power of `hz` in `samples`: about a² for a sine of amplitude a."""
    n = len(samples)
    if n == 0:
        return 0.0
    coeff = 2.0 * math.cos(2.0 * math.pi * hz / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coeff * s1 * s2
    # |X(k)|² of a sine of amplitude a over n samples is (a·n/2)².
    return power / (n / 2.0) ** 2
