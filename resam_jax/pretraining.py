"""Moved to resam_jax.experiments.pretraining. This alias serves imports written before the move until they are
updated; new code imports resam_jax.experiments.pretraining."""

import sys

from resam_jax.experiments import pretraining

sys.modules[__name__] = pretraining
