"""Errors raised for bad user input.

Every problem a user can cause (a bad config value, a workdir that does not
match the config, a corrupt checkpoint, NaNs in a pretrained model) raises a
subclass of `Dfl2lError` with a message that names the problem. The launchers
turn these into a one-line message on stderr and a non-zero exit.

Writing: every writer of the library (checkpoints, specs, results) turns a full disk or a
read-only folder into one `WriteError` through `write_error`, after removing what it had
half-written, so that the user reads one line naming the file and what is unchanged.
"""

import errno
import os
import re


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


class WriteError(Dfl2lError, OSError):
  """A file could not be written: a full disk or quota, a read-only or forbidden folder."""


# File-system errors a user fixes (space, quota, a file size limit, permissions).
USER_OS_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                  errno.EPERM)
# tensorstore (orbax's writer) reports an OS error as text: "... [os_error_code='28']".
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)'?")


def user_os_error(e):
  """(errno, what, filename) of the user-fixable file-system error in `e`'s chain, or None.

  Finds an `OSError` (a full disk buried in another library's exception) and tensorstore's
  errors, which orbax raises as `ValueError("RESOURCE_EXHAUSTED: ... [os_error_code='28']")`.
  """
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in USER_OS_ERRORS:
      return e.errno, e.strerror or os.strerror(e.errno), e.filename
    match = _OS_ERROR_CODE.search(str(e)) if not isinstance(e, OSError) else None
    if match and int(match.group(1)) in USER_OS_ERRORS:
      code = int(match.group(1))
      return code, os.strerror(code), None
    e = e.__cause__ or e.__context__
  return None


def describe_os_error(code, what):
  """'the disk is full (No space left on device)' and the like, for messages."""
  if code in (errno.ENOSPC, errno.EDQUOT):
    return f"the disk is full ({what})"
  if code == errno.EFBIG:
    return f"{what} (over the file-size limit, `ulimit -f`)"
  return what


def write_error(e, what, kept, cls=WriteError,
                then="rerun the same command, which resumes from the last checkpoint"):
  """A one-line `cls` (a WriteError) for exception `e` raised while writing `what` (a file
  or folder, named in the message), or None when `e` is no user-fixable file-system error
  (a bug: the caller re-raises it as it is). `kept`: what is unchanged, e.g. "The earlier
  results there are unchanged"; `then`: what to do once the disk or folder is fixed."""
  found = user_os_error(e)
  if found is None:
    return None
  code, strerror, _ = found
  return cls(f"could not write {what}: {describe_os_error(code, strerror)}. {kept}; free "
             f"space (or fix the folder) and {then}")
