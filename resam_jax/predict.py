"""`python -m resam_jax.predict`: one image or a folder of images (resam_jax.inference.image)."""

import sys

from resam_jax.inference.image import main

if __name__ == "__main__":
    sys.exit(main())
