"""Shared plumbing of the absl entry points: flags, logging, clean failures.

Every launcher takes `--config` (a config file, `path[:variant]`, with
`--config.<field>=value` overrides) and `--workdir`; `--dry_run` checks the config and
says what a run would do, touching nothing; `--list_methods` lists the methods. A
problem the user can fix (a bad flag or config value, a workdir in use, a mismatching
or corrupt checkpoint, a full disk) ends in one line `error: ...` and exit status 1.
"""

import difflib
import os
import shlex
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dfl2l_jax import config_lib
from dfl2l_jax import metrics
from dfl2l_jax import sharding
from dfl2l_jax import errors
from dfl2l_jax.errors import Dfl2lError

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, path[:variant], e.g. configs/sinusoid.py:smoke; fields "
    "are overridden by --config.<field>=value.", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None,
                              "Run directory (checkpoints, results); a rerun resumes it.")
DRY_RUN = flags.DEFINE_bool("dry_run", False, "Check the config, print it with the methods "
                            "and the workdir's state, and exit without running anything.")
LIST_METHODS = flags.DEFINE_bool("list_methods", False,
                                 "List the methods (config.methods) and exit.")

def fail(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def command_line():
  """The command that started this process, as a user would type it."""
  module = os.path.splitext(os.path.basename(sys.argv[0]))[0]
  return " ".join(["python -m launch." + module] + [shlex.quote(a) for a in sys.argv[1:]])


def _config_fields(argv):
  """Dotted field names of the config named by --config in argv (for suggestions)."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return []
  try:
    config = config_lib.load_config_file(spec)
  except Exception:  # pylint: disable=broad-except
    return []
  out = []
  def walk(node, prefix):
    for k, v in node.items():
      if hasattr(v, "items"):
        walk(v, f"{prefix}{k}.")
      else:
        out.append(prefix + k)
  walk(config, "")
  return out


def _unknown_override(argv):
  """A message for the first --config.<field> of argv that the config does not have."""
  fields = _config_fields(argv)
  if not fields:
    return None
  sections = {f.rsplit(".", 1)[0] for f in fields if "." in f}
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    name = arg[len("--config."):].split("=", 1)[0]
    if name in fields or name in sections:
      continue
    close = difflib.get_close_matches(name, fields, n=1)
    return (f"--config.{name}: the config has no field {name!r}"
            + (f"; did you mean --config.{close[0]}?" if close else ""))
  return None


def flag_error(e, argv):
  """A one-line message for an exception raised while parsing the flags or loading the
  config (the tracebacks of absl and ml_collections name the problem in their last line)."""
  unknown = _unknown_override(argv)
  if unknown:
    return unknown
  inner = e
  while inner.__cause__ is not None or inner.__context__ is not None:
    inner = inner.__cause__ or inner.__context__
  if isinstance(inner, OSError) and inner.filename:
    return f"--config: cannot read {inner.filename} ({inner.strerror})"
  lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
  message = lines[-1] if lines else type(inner).__name__
  first = str(e).splitlines()[0] if str(e) else ""
  if first.startswith("flag --") and inner is not e:
    return f"{first.split(': ', 1)[0][len('flag '):]}: {message}"
  return message


def parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    fail(flag_error(e, argv))


def _os_error(e):
  """(errno, what, filename) of the user-fixable file-system error in `e`'s chain (a full
  disk buried in orbax or tfds), or None."""
  return errors.user_os_error(e)


def list_methods():
  from dfl2l_jax import methods  # pylint: disable=g-import-not-at-top
  print("Methods (--config.methods=a,b,...: method names or tags; 'all' for every one; '' "
        "for the launcher's defaults, the methods tagged with its name):")
  for m in methods.METHODS.values():
    data = ("  [reads the zoo tasks' data]" if m.uses_task_data is True else
            "  [reads the zoo tasks' data in some settings]" if m.uses_task_data else "")
    tags = f"  (tags: {', '.join(m.tags)})" if m.tags else ""
    print(f"  {m.name:16s} {m.description}{data}{tags}")
  print(f"Tags: {', '.join(methods.TAGS)}")


def main_wrapper(fn, setting=None):
  """Runs `fn(config, workdir, command)`; a user's error ends in one line and exit 1."""

  def main(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if LIST_METHODS.value:
      list_methods()
      return
    try:
      config = CONFIG.value
      if config is not None:
        "seed" in config  # pylint: disable=pointless-statement  # a failed load raises here
    except Exception as e:  # pylint: disable=broad-except
      fail(flag_error(e, sys.argv))
    if config is None:
      fail("--config is required, e.g. --config=configs/sinusoid.py (see --help)")
    if not WORKDIR.value and not DRY_RUN.value:
      fail("--workdir is required, e.g. --workdir=/tmp/dfl2l_run (see --help)")
    # Our progress at INFO; other libraries' (orbax's many lines) at WARNING.
    logging.set_verbosity(logging.WARNING)
    try:
      # Several hosts: --config.mesh.distributed=True or DFL2L_DISTRIBUTED=1, before
      # anything touches the devices. Then only process 0 logs.
      sharding.initialize_distributed(config)
      metrics.install_stderr_handler()
      if DRY_RUN.value:
        from dfl2l_jax import pipeline  # pylint: disable=g-import-not-at-top
        print(pipeline.describe(config, WORKDIR.value, setting))
        return
      out = fn(config, WORKDIR.value, command_line())
      if out is not None and sharding.is_main_process():
        from dfl2l_jax import results  # pylint: disable=g-import-not-at-top
        print(results.summary(out, WORKDIR.value))
    except Dfl2lError as e:
      fail(e)
    except Exception as e:  # pylint: disable=broad-except
      os_error = _os_error(e)
      if os_error is None:
        raise
      code, what, filename = os_error
      where = f" ({filename})" if filename else ""
      fail(f"{errors.describe_os_error(code, what)}{where}. Results written before are "
           "unchanged; fix this and rerun the same command to resume")

  return main


def run(fn, setting=None):
  app.run(main_wrapper(fn, setting), flags_parser=parse_flags)
