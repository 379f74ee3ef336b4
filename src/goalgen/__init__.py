"""goalgen: Slurm-native training of generative goal-pose models for NAMO."""

from importlib import metadata

try:
    __version__ = metadata.version("goalgen")
except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0+unknown"
