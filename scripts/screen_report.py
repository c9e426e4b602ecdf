r"""What a screen did with each model of contaminated runs: bad models dropped and kept,
good models dropped (results/untrusted_zoo.md).

  python scripts/screen_report.py runs/fake30_screen_s{1,2,3} [--out FILE]

Each run is a workdir or results JSON file whose rows carry a screen's record
(`notes.screen`: methods/zoo_features.py) and whose zoo may be contaminated
(`zoo_quality.contamination`: zoo/contamination.py). One line per run and screened method.
"""

import argparse
import os
import sys

import aggregate_seeds  # scripts/ is on the path of a script run from it


def report(path):
  file = os.path.join(path, "results.json") if os.path.isdir(path) else path
  results = aggregate_seeds.read(file)
  bad = set()
  contamination = (results.get("zoo_quality") or {}).get("contamination") or {}
  for idx in contamination.get("models", {}).values():
    bad |= set(idx)
  lines, seen = [], set()
  for r in results.get("rows", []):
    screen = (r.get("notes") or {}).get("screen")
    if not isinstance(screen, dict) or r["method"] in seen:
      continue
    seen.add(r["method"])
    dropped, kept = set(screen["dropped"]), set(screen["kept"])
    lines.append(
        f"| {path} | {results.get('seed')} | {contamination.get('spec') or 'clean'} | "
        f"{r['method']} | {len(kept)} of {len(kept) + len(dropped)} | "
        f"{len(bad & dropped)} of {len(bad)} | {len(bad & kept)} | "
        f"{len(dropped - bad)} of {len(kept | dropped) - len(bad)} | {screen['bar']:.1f} |")
  if not lines:
    raise SystemExit(f"error: {file}: no row carries a screen's record")
  return lines


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("runs", nargs="+")
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  text = "\n".join(["| run | seed | contamination | method | kept | bad dropped | bad kept | "
                    "good dropped | bar |", "|---|---|---|---|---|---|---|---|---|"]
                   + [line for run in a.runs for line in report(run)]) + "\n"
  sys.stdout.write(text)
  if a.out:
    with open(a.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
