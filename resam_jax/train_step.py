"""Moved to resam_jax.method.train_step. This alias serves imports written before the move until they are
updated; new code imports resam_jax.method.train_step."""

import sys

from resam_jax.method import train_step

sys.modules[__name__] = train_step
