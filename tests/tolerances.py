"""Tolerances that follow from float32 arithmetic, for two computations of the same quantity
that differ only in the order of their float32 operations (batch shapes, gradient
accumulation, instance chunks, sharding). They hold on any x86 CPU: XLA may pick another
blocking or vector width on another machine, never a bound below these.

Each float32 sum of n terms, in any order, lies within (n - 1) eps sum|x_i| of the exact sum
(Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 4.2), so two orders
differ by at most 2 (n - 1) eps relative for terms of one sign. A loss built from such sums
is compared at that bound, n being the largest reduction that feeds it.
"""

import math

import numpy as np

EPS = float(np.finfo(np.float32).eps)


def reordered_sum_rtol(num_summed: int) -> float:
    """Relative bound between two float32 sums of the same `num_summed` same-signed terms."""
    return 2 * max(num_summed - 1, 1) * EPS


def squared_error_atol(mean_squared_error: float, count: int, rtol: float) -> float:
    """Bound on the change of mean_i (p_i - a_i)^2 over `count` terms when the a_i are exact
    and each prediction p_i moves by at most rtol |p_i|: the change of d^2 is 2 |d| dp + dp^2,
    mean |d| <= sqrt(mse), and |p_i| <= 1 + |d_i| <= 1 + sqrt(count mse) for targets in [0, 1].
    Relative to the term itself this bound grows as the error shrinks: the squared error of
    an accurate head is where a fixed rtol fails."""
    p_max = 1.0 + math.sqrt(count * mean_squared_error)
    dp = rtol * p_max
    return 2.0 * math.sqrt(mean_squared_error) * dp + dp * dp


# Parity of our SAM 2 with `sam2` 1.1.0's (max abs difference, float32 matmuls): the bounds of
# docs/sam2.md, measured 10-100x below them (image embedding 1e-6 to 7e-6 at 1024, low-res logits
# <= 1e-6, IoU 6e-8).
SAM2_EMBEDDING_ATOL = 1e-4  # image embedding and high-resolution features
SAM2_LOW_RES_LOGITS_ATOL = 2e-5
SAM2_IOU_ATOL = 1e-6
