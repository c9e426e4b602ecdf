#!/bin/bash
# The runs behind results/imported_zoo.md: a teacher zoo trained in PyTorch the field's way
# (scripts/torch_zoo.py, needs torch), imported, and every method run on it, beside our own
# trainer's zoo of the same size (40 Conv4-32 models, the proxy's classes at 32x32).
#
#   DATA=/path/to/mini-imagenet bash scripts/imported_zoo_tables.sh STEP SEED
#
# STEP: teachers (train the 40 PyTorch teachers once), import (write the zoo folder once),
# imported (every method on the imported zoo, seed SEED: the meta-train/validation split of
# the zoo and the test tasks), ours (the same on our trainer's zoo of seed SEED). Rerunning a
# step resumes it. Then, per zoo:
#
#   python scripts/aggregate_seeds.py --baseline va WORKROOT/imported_s*/results.json
#
# Environment: DATA (required), WORKROOT (default workdirs/imported), EXTRA (more flags).
set -euo pipefail
if [[ $# -lt 1 ]]; then sed -n '2,16p' "$0" >&2; exit 2; fi
step=$1; seed=${2:-1}
root=${WORKROOT:-workdirs/imported}
mkdir -p "$root"
config=configs/cifarfs_5way.py:proxy,data_free
# The field's normalisation at 32x32 (FREE tools.py; CIFAR mean/std), our meta-test.
common=(--config.data.manual_dir="$DATA" --config.seed="$seed" --config.shots=1,5)
case "$step" in
  teachers)  # The field: 100 teachers, 60 epochs. Reduced: 40 teachers, 15 epochs (CPU).
    python scripts/torch_zoo.py --dataset=mini_imagenet32 --manual_dir="$DATA" \
        --num_teachers=40 --epochs=15 --seed=0 --out="$root/torch_teachers" ;;
  import)
    python -m launch.import_zoo --format=dfml --src="$root/torch_teachers" \
        --out="$root/zoo_torch" --class_names="$root/torch_teachers/class_names.txt" \
        --image_size=32 --mean=0.5071,0.4867,0.4408 --std=0.2675,0.2565,0.2761 ;;
  imported|ours)
    if [[ $step == imported ]]; then
      zoo=(--config.zoo.source="$root/zoo_torch")
    else  # our trainer, Conv4-32, as many training images per model as a teacher saw
      zoo=(--config.model.filters=32 --config.zoo.batch_size=128 --config.zoo.steps=300)
    fi
    w="$root/${step}_s$seed"
    # 600 test tasks for VA and zoo_features; 100 for the rest (and VA again, to pair them).
    python -m launch.offline --config=$config --workdir="$w" "${common[@]}" "${zoo[@]}" \
        --config.methods=va,zoo_features --config.metatest.num_tasks=600 ${EXTRA:-}
    python -m launch.offline --config=$config --workdir="$w" "${common[@]}" "${zoo[@]}" \
        --config.methods=va,dfl2l,ota,weight_matching --config.metatest.num_tasks=100 ${EXTRA:-} ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
