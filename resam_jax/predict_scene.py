"""`python -m resam_jax.predict_scene`: a large scene in tiles (resam_jax.inference.scene)."""

import sys

from resam_jax.inference.scene import main

if __name__ == "__main__":
    sys.exit(main())
