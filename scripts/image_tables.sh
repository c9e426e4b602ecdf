#!/bin/bash
# Runs one seed of an image table of results/ (Tables 2 and 3) at the reduced scale those pages
# document, one method per invocation so that a killed run keeps every finished method.
#
#   bash scripts/image_tables.sh SETTING SEED [METHOD ...]
#
# SETTING: cf5 | cf10 (CIFAR-FS protocol on Mini-ImageNet@32, the `proxy` config variant) or
# mi5 | mi10 (Mini-ImageNet at 84x84). METHODs default to every registered method. Each method's
# results.json is kept as WORKDIR/results_METHOD.json; a method whose file exists is skipped,
# so rerunning the same command continues where a killed run stopped (the zoo and each method's
# meta-training resume from their checkpoints). Then, over every seed of the setting:
#
#   python scripts/aggregate_seeds.py --baseline va WORKROOT/SETTING_seed*/results_*.json
#
# (add `--save-merged results/raw/SETTING` to keep each seed as one small file beside the
# tables: WORKROOT is not committed, and the per-task values live only there.)
#
# Environment: DATA (required: the folder of the Mini-ImageNet download, which every SETTING
# reads), TFDS_DIR (prepared tfds data, default /tmp/tfds_data), WORKROOT (default
# workdirs/img), WORKDIR (this seed's run directory, default WORKROOT/SETTING_seedSEED), EXTRA
# (more flags, e.g. a smoke check: EXTRA="--config.zoo.steps=20 --config.metatest.num_tasks=4"),
# DRY_RUN=1 (print each method's command and run nothing; without DATA they name it `$DATA`).
#
#   DATA=/path/to/mini-imagenet bash scripts/image_tables.sh mi5 1
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,24p' "$0" >&2
  exit 2
fi
SETTING=$1
SEED=$2
shift 2
if ! [[ $SEED =~ ^[0-9]+$ ]]; then
  echo "error: SEED must be a non-negative integer, got '$SEED'" >&2
  exit 2
fi
# Every registered method (dfl2l_jax/methods/__init__.py), in registry order; PYTHON: the
# interpreter that has the project installed (default: python).
ALL=$("${PYTHON:-python}" -c 'from dfl2l_jax import methods; print(" ".join(methods.METHODS))')
METHODS=${*:-$ALL}

DATA=${DATA:-}
TFDS_DIR=${TFDS_DIR:-/tmp/tfds_data}
WORKROOT=${WORKROOT:-workdirs/img}
WORKDIR=${WORKDIR:-$WORKROOT/${SETTING}_seed$SEED}

# The reduced scales of results/cifarfs_proxy.md and results/miniimagenet.md (CPU budget):
# the `reduced` config variant (configs/fewshot_base.py, REDUCED).
case $SETTING in
  cf5)  FLAGS="--config=configs/cifarfs_5way.py:proxy,reduced" ;;
  cf10) FLAGS="--config=configs/cifarfs_10way.py:proxy,reduced" ;;
  mi5)  FLAGS="--config=configs/miniimagenet_5way.py:reduced" ;;
  mi10) FLAGS="--config=configs/miniimagenet_10way.py:reduced" ;;
  *) echo "error: unknown SETTING '$SETTING' (cf5, cf10, mi5 or mi10)" >&2; exit 2 ;;
esac
for m in $METHODS; do
  case " $ALL " in *" $m "*) ;; *) echo "error: unknown method '$m' (known: $ALL)" >&2; exit 2 ;; esac
done
# The command of one method, into the array CMD.
command_for() {
  # shellcheck disable=SC2086
  CMD=(python -m launch.offline $FLAGS ${EXTRA:-} --config.seed="$SEED"
       --config.data.manual_dir="${DATA:-\$DATA}" --config.data.data_dir="$TFDS_DIR"
       --workdir="$WORKDIR" --config.methods="$1")
}
if [[ -n ${DRY_RUN:-} ]]; then
  for m in $METHODS; do
    command_for "$m"
    echo "${CMD[@]}"
  done
  exit 0
fi
if [[ -z $DATA ]]; then
  echo "error: DATA is not set: point it at the folder of the Mini-ImageNet download, e.g." \
       "DATA=/path/to/mini-imagenet bash scripts/image_tables.sh $SETTING $SEED" >&2
  exit 2
fi
if [[ ! -d $DATA ]]; then
  echo "error: DATA=$DATA is not a folder (point it at the Mini-ImageNet download)" >&2
  exit 2
fi

mkdir -p "$WORKDIR"
for m in $METHODS; do
  if [[ -f $WORKDIR/results_$m.json ]]; then
    echo "$SETTING seed $SEED $m: done before ($WORKDIR/results_$m.json)"
    continue
  fi
  start=$(date +%s)
  command_for "$m"
  if "${CMD[@]}" > "$WORKDIR/$m.log" 2>&1; then
    cp "$WORKDIR/results.json" "$WORKDIR/results_$m.json.tmp"
    mv "$WORKDIR/results_$m.json.tmp" "$WORKDIR/results_$m.json"
    echo "$SETTING seed $SEED $m: $(( $(date +%s) - start )) s"
  else
    echo "error: $SETTING seed $SEED $m failed after $(( $(date +%s) - start )) s;" \
         "the last lines of $WORKDIR/$m.log:" >&2
    tail -5 "$WORKDIR/$m.log" >&2
    exit 1
  fi
done
