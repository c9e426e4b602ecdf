"""Config validation by table: a field's path and the kind of value it must hold.

Every validator of the project (the pipeline's in config_lib and each method's
`validate`) states its simple fields as a table, `{"maml.meta_steps": POSITIVE_INT,
...}`, and `check(config, table)` raises ConfigError naming the first bad value.
Cross-field rules (a batch that must fit in another, a split that must leave both
halves non-empty) stay as code beside the table.
"""

import math
import numbers
from typing import Callable, Mapping, NamedTuple, Tuple

from dfl2l_jax.errors import ConfigError


def is_int(v) -> bool:
  """An int that is not a bool (numpy integers included)."""
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
  """A real number that is not a bool (ints and numpy floats included)."""
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def has(config, path: str) -> bool:
  """Whether config has the field at path "a.b"."""
  node = config
  for part in path.split("."):
    if part not in node:
      return False
    node = node[part]
  return True


def get(config, path: str):
  """config["a"]["b"] for path "a.b"; ConfigError naming the path when it is missing."""
  node = config
  for part in path.split("."):
    if part not in node:
      raise ConfigError(f"config has no field {path!r}")
    node = node[part]
  return node


class Rule(NamedTuple):
  """`ok(value)` says whether a value is acceptable; `expected` completes
  "config.<path> must be ..." in the error."""
  ok: Callable[[object], bool]
  expected: str


POSITIVE_INT = Rule(lambda v: is_int(v) and v > 0, "a positive int")
NON_NEGATIVE_INT = Rule(lambda v: is_int(v) and v >= 0, "an int >= 0")
POSITIVE_REAL = Rule(lambda v: is_real(v) and math.isfinite(v) and v > 0,
                     "a positive finite number")
NON_NEGATIVE_REAL = Rule(lambda v: is_real(v) and math.isfinite(v) and v >= 0,
                         "a non-negative finite number")
BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
STRING = Rule(lambda v: isinstance(v, str), "a string")
POSITIVE_INTS = Rule(
    lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(map(POSITIVE_INT.ok, v)),
    "a non-empty tuple of positive ints")
POSITIVE_REALS = Rule(
    lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(map(POSITIVE_REAL.ok, v)),
    "a non-empty tuple of positive finite numbers")
NON_NEGATIVE_REALS = Rule(
    lambda v: isinstance(v, (tuple, list)) and all(map(NON_NEGATIVE_REAL.ok, v)),
    "a tuple of non-negative finite numbers (may be empty)")


def one_of(choices: Tuple) -> Rule:
  return Rule(lambda v: v in choices, f"one of {tuple(choices)}")


def int_at_least(low: int) -> Rule:
  return Rule(lambda v: is_int(v) and v >= low, f"an int >= {low}")


def real_in(low, high, low_closed=False, high_closed=False) -> Rule:
  """A real in the interval from low to high, open at each end unless closed there."""
  def ok(v):
    return (is_real(v) and (low <= v if low_closed else low < v)
            and (v <= high if high_closed else v < high))
  left, right = "[" if low_closed else "(", "]" if high_closed else ")"
  return Rule(ok, f"a number in {left}{low}, {high}{right}")


def explained(rule: Rule, note: str) -> Rule:
  """`rule`, its error completed by a note on what the value means."""
  return Rule(rule.ok, f"{rule.expected} ({note})")


def check(config, table: Mapping[str, Rule], optional: bool = False):
  """Raises ConfigError for the first field of `table` whose value breaks its rule.

  A field `config` lacks is an error, or, with `optional`, skipped (its default applies).
  """
  for path, rule in table.items():
    if optional and not has(config, path):
      continue
    v = get(config, path)
    if not rule.ok(v):
      raise ConfigError(f"config.{path} must be {rule.expected}, got {v!r}")

