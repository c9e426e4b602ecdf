#!/bin/bash
# The runs behind results/zoo_as_it_comes.md: a zoo of two architectures (30 Conv4-32 and
# 10 ResNet-10s of widths 8-16-32-64, our trainer) against the Conv4-only zoo of the same
# size and seed (40 Conv4-32; model m has the same task, its classes and images, in both),
# both read as the zoo folders our trainer writes (BatchNorm by each task's support set).
#
#   DATA=/path/to/mini-imagenet bash scripts/zoo_as_it_comes_tables.sh STEP SEED
#
# STEP: zoos (train both zoos of seed SEED, resumable), features (va and zoo_features on
# both; zoo_features on the mixed zoo with every model equal, with the Conv4 group alone and
# with the group weight chosen on meta-validation episodes), distill (zoo_distill on both),
# inversion (inversion_maml on both), group (the mixed zoo's 30 Conv4s as a zoo of their own:
# its manifest without the ResNets, the same files; va, zoo_features and zoo_distill on it),
# torch_zoos (the same design trained in PyTorch by scripts/torch_zoo.py, the field's recipe
# at 15 epochs: 30 Conv4-32 and 10 ResNet-10-8-16-32-64 teachers, and 40 Conv4-32, the first
# 30 shared; both imported with launch.import_zoo; torch needed), torch_features (va and
# zoo_features on both imported zoos, zoo_features on the mixed one's Conv4 group alone, and
# the group weight chosen on meta-validation), torch_distill (zoo_distill on both imported
# zoos), torch_fusion (DFL2L and OTA on both: the mixed zoo's Conv4 group).
# Then the paired tables:
#
#   python scripts/paired_runs.py --before WORKROOT/conv4_s* --after WORKROOT/mixed_s*
#
# Environment: DATA (required), WORKROOT (default workdirs/mixed), EXTRA (more flags).
set -euo pipefail
if [[ $# -lt 1 ]]; then sed -n '2,24p' "$0" >&2; exit 2; fi
step=$1; seed=${2:-1}
root=${WORKROOT:-workdirs/mixed}
mkdir -p "$root"
# The CPU reductions of results/imported_zoo.md's "our trainer": 300 steps of 128 images.
common=(--config=configs/cifarfs_5way.py:proxy,data_free --config.data.manual_dir="$DATA"
        --config.seed="$seed" --config.model.filters=32 --config.zoo.batch_size=128
        --config.zoo.steps=300)
run=(--config.shots=1,5 --config.metatest.num_tasks=100 ${EXTRA:-})
conv4=(--config.zoo.source="$root/conv4_zoo_s$seed/zoo_models")
mixed=(--config.zoo.source="$root/mixed_zoo_s$seed/zoo_models")
case "$step" in
  zoos)  # The Conv4-only zoo is trained by a run (which writes it as a folder); VA is cheap.
    python -m launch.offline "${common[@]}" --workdir="$root/conv4_zoo_s$seed" \
        --config.methods=va "${run[@]}"
    python -m launch.pretrain "${common[@]}" --workdir="$root/mixed_zoo_s$seed" \
        --config.zoo.architectures=conv4-32:30,resnet10-8-16-32-64:10 ;;
  features)
    python -m launch.offline "${common[@]}" "${conv4[@]}" --workdir="$root/conv4_s$seed" \
        --config.methods=va,zoo_features "${run[@]}"
    python -m launch.offline "${common[@]}" "${mixed[@]}" --workdir="$root/mixed_s$seed" \
        --config.methods=va,zoo_features "${run[@]}"
    python -m launch.offline "${common[@]}" "${mixed[@]}" --workdir="$root/mixed_w0_s$seed" \
        --config.methods=zoo_features --config.zoo_features.group_weight=0 "${run[@]}"
    python -m launch.offline "${common[@]}" "${mixed[@]}" --workdir="$root/mixed_grid_s$seed" \
        --config.methods=zoo_features "${run[@]}" \
        --config.zoo_features.group_weight_grid=0,0.25,0.5,1,2,4,16 ;;
  distill)
    python -m launch.offline "${common[@]}" "${conv4[@]}" --workdir="$root/conv4_s$seed" \
        --config.methods=zoo_distill "${run[@]}"
    python -m launch.offline "${common[@]}" "${mixed[@]}" --workdir="$root/mixed_s$seed" \
        --config.methods=zoo_distill "${run[@]}" ;;
  inversion)  # MAML batches of 16 images, as on the imported zoo (results/imported_zoo.md):
    # whole batches of the zoo's 128 make its MAML 7x slower per step (30 minutes a run here).
    small=(--config.maml.support_size=16 --config.maml.query_size=16)
    python -m launch.offline "${common[@]}" "${conv4[@]}" --workdir="$root/conv4_s$seed" \
        --config.methods=inversion_maml "${small[@]}" "${run[@]}"
    python -m launch.offline "${common[@]}" "${mixed[@]}" --workdir="$root/mixed_s$seed" \
        --config.methods=inversion_maml "${small[@]}" "${run[@]}" ;;
  group)
    python - "$root/mixed_zoo_s$seed/zoo_models" "$root/conv4_group_zoo_s$seed" <<'PY'
import json, os, sys
from dfl2l_jax.zoo import store
src, dst = (os.path.abspath(d) for d in sys.argv[1:])
manifest = store.read_manifest(src)
manifest["models"] = [m for i, m in enumerate(manifest["models"])  # the zoo's own architecture
                      if store.model_architecture(manifest, i) == manifest["architecture"]]
os.makedirs(dst, exist_ok=True)
for m in manifest["models"]:
  if not os.path.exists(os.path.join(dst, m["file"])):
    os.symlink(os.path.join(src, m["file"]), os.path.join(dst, m["file"]))
with open(os.path.join(dst, store.MANIFEST), "w") as f:
  json.dump(manifest, f, indent=1)
print(f"{dst}: {len(manifest['models'])} models")
PY
    python -m launch.offline "${common[@]}" --config.zoo.source="$root/conv4_group_zoo_s$seed" \
        --workdir="$root/conv4_group_s$seed" --config.methods=va,zoo_features,zoo_distill \
        "${run[@]}" ;;
  torch_zoos)
    mixed_src="$root/torch_mixed_teachers_s$seed" conv4_src="$root/torch_conv4_teachers_s$seed"
    python scripts/torch_zoo.py --dataset=mini_imagenet32 --manual_dir="$DATA" --epochs=15 \
        --seed="$seed" --out="$mixed_src" --architectures=conv4-32:30,resnet10-8-16-32-64:10
    # Teacher i depends only on the seed and i (same machine, same thread count): the Conv4
    # zoo's first 30 are the mixed zoo's, copied; the script trains the 10 others.
    mkdir -p "$conv4_src"
    for i in $(seq 0 29); do
      [[ -e "$conv4_src/model_specific_$i.pth" ]] ||
        cp "$mixed_src/model_specific_$i.pth" "$conv4_src/"
    done
    python scripts/torch_zoo.py --dataset=mini_imagenet32 --manual_dir="$DATA" --epochs=15 \
        --seed="$seed" --out="$conv4_src" --num_teachers=40
    for kind in mixed conv4; do
      [[ -e "$root/torch_${kind}_zoo_s$seed" ]] || python -m launch.import_zoo --format=dfml \
          --src="$root/torch_${kind}_teachers_s$seed" --out="$root/torch_${kind}_zoo_s$seed" \
          --class_names="$mixed_src/class_names.txt" --image_size=32 \
          --mean=0.5071,0.4867,0.4408 --std=0.2675,0.2565,0.2761
    done ;;
  torch_features)
    for kind in conv4 mixed; do
      python -m launch.offline "${common[@]}" --config.zoo.source="$root/torch_${kind}_zoo_s$seed" \
          --workdir="$root/torch_${kind}_s$seed" --config.methods=va,zoo_features "${run[@]}"
    done
    python -m launch.offline "${common[@]}" --config.zoo.source="$root/torch_mixed_zoo_s$seed" \
        --workdir="$root/torch_mixed_w0_s$seed" --config.methods=zoo_features "${run[@]}" \
        --config.zoo_features.group_weight=0
    python -m launch.offline "${common[@]}" --config.zoo.source="$root/torch_mixed_zoo_s$seed" \
        --workdir="$root/torch_mixed_grid_s$seed" --config.methods=zoo_features "${run[@]}" \
        --config.zoo_features.group_weight_grid=0,0.25,0.5,1,2,4,16 ;;
  torch_distill|torch_fusion)
    methods=zoo_distill; [[ $step == torch_fusion ]] && methods=dfl2l,ota
    for kind in conv4 mixed; do
      python -m launch.offline "${common[@]}" --config.zoo.source="$root/torch_${kind}_zoo_s$seed" \
          --workdir="$root/torch_${kind}_s$seed" --config.methods=$methods "${run[@]}"
    done ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
