"""Errors raised for bad user input.

Every problem a user can cause (a bad config value, a workdir that does not
match the config, a corrupt checkpoint, NaNs in a pretrained model) raises a
subclass of `Dfl2lError` with a message that names the problem. The launchers
turn these into a one-line message on stderr and a non-zero exit.
"""


class Dfl2lError(Exception):
  """Base class of the errors a user can fix."""


class ConfigError(Dfl2lError, ValueError):
  """A config value is missing, of the wrong type or out of range."""


class ZooError(Dfl2lError, ValueError):
  """The model zoo is unusable: non-finite values, wrong shapes, or a mismatch."""


class CheckpointError(Dfl2lError, IOError):
  """A checkpoint cannot be read (truncated, corrupt) or belongs to another run."""


class DataError(Dfl2lError, IOError):
  """Input data is missing or incomplete."""


class NotApplicable(Dfl2lError):
  """A method cannot run in this setting (e.g. task vectors without a common base).

  The pipeline records the method's rows as "n/a" with this message as the reason
  instead of failing the run.
  """
