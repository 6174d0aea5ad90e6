"""Moved to resam_jax.models.sam. This alias (the package and its modules) serves imports
written before the move until they are updated; new code imports resam_jax.models.sam."""

import sys

from resam_jax.models import sam
from resam_jax.models.sam import (
    architecture,
    checkpoint,
    image_encoder,
    layers,
    mask_decoder,
    params,
    prompt_encoder,
)
from resam_jax.models.sam import sam as sam_module

for _module in (architecture, checkpoint, image_encoder, layers, mask_decoder, params,
                prompt_encoder, sam_module):  # fmt: skip
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module
sys.modules[__name__] = sam
