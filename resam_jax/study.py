"""`python -m resam_jax.study`, whose code is resam_jax.experiments.study."""

from absl import app

from resam_jax.experiments import study as _command
from resam_jax.run import cli

if __name__ == "__main__":
    __doc__ = _command.__doc__  # absl's --help prints the docstring of __main__
    _command._define_flags()  # its --rows/--corruptions exist only when it runs as a program
    app.run(_command.main, flags_parser=cli.parse_flags)
