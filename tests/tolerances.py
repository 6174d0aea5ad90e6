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
