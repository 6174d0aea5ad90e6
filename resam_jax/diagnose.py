"""`python -m resam_jax.diagnose`, whose code is resam_jax.experiments.diagnose."""

from absl import app

from resam_jax.experiments import diagnose as _command
from resam_jax.run import cli

if __name__ == "__main__":
    __doc__ = _command.__doc__  # absl's --help prints the docstring of __main__
    app.run(_command.main, flags_parser=cli.parse_flags)
