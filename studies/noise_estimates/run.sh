#!/usr/bin/env bash
# The measurements of studies/noise_estimates (issue #35): how far `--noise-estimate auto` lands from the realised
# noise rate, and the detectors (knn, cleanlab, the small-loss detector of a CE run) with auto estimates.
# Run from the repository root on a CPU: SSL_NOISE_DATA=../shared/data bash studies/noise_estimates/run.sh
set -euo pipefail
CK=${CK:-checkpoints}; RUNS=${RUNS:-runs/noise_estimates}
sn() { ssl-noise --checkpoints "$CK" --runs "$RUNS" "$@"; }

# 1. A SimCLR encoder at the recipe's 20 epochs on the full BloodMNIST training split (CPU, bf16), with the demo's
#    ImageNet stem (stride 4 at 28 px: ~14x fewer FLOPs; the recipe's cifar stem would take ~2.5 h on this CPU).
SIMCLR=$(sn pretrain --method simclr --stem imagenet --quiet | tail -1)
echo "simclr entry: $SIMCLR"

# 2. knn and cleanlab on the frozen features of random weights and of that entry, two noise seeds per setting.
for init in random "$SIMCLR"; do
  for setting in "symmetric 0.2" "symmetric 0.4" "symmetric 0.6" "pairflip 0.3"; do
    set -- $setting
    for seed in 1 2; do
      for detector in knn cleanlab; do
        sn detect --detector "$detector" --init "$init" --noise-type "$1" --noise "$2" --noise-seed "$seed" | tail -1
      done
    done
  done
done

# 3. The 1:9 PneumoniaMNIST split (388 normal, 3,494 pneumonia) at symmetric 0.2, random-weight features.
for seed in 1 2 3; do
  sn detect --detector knn --init random --dataset ../shared/data/pneumoniamnist_trainnormal388.npz \
     --noise 0.2 --noise-seed "$seed" | tail -1
done

# 4. The small-loss detector of a CE run: a 30-epoch linear probe (CE) from the SimCLR entry, then `detect loss`.
for setting in "symmetric 0.4" "pairflip 0.3"; do
  set -- $setting
  for seed in 1 2; do
    run=$(sn finetune --init "$SIMCLR" --freeze --noise-type "$1" --noise "$2" --noise-seed "$seed" --quiet | tail -1)
    sn detect --detector loss --run "$run" | tail -1
  done
done

sn detections "$RUNS/detect" --out studies/noise_estimates/detections.csv > /dev/null
echo done
