"""Moved to resam_jax.method.train_state. This alias serves imports written before the move until they are
updated; new code imports resam_jax.method.train_state."""

import sys

from resam_jax.method import train_state

sys.modules[__name__] = train_state
