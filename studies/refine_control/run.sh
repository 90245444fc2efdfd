#!/usr/bin/env bash
# studies/refine_control (issue #35): active label refinement against its zero-budget control, i.e. the same rounds
# of fine-tuning with nothing relabelled. Linear probe on the frozen SimCLR-20 (ImageNet stem) encoder of studies/noise_estimates
# without augmentation (CPU-cheap: features are encoded once), BloodMNIST symmetric 0.4, two noise seeds.
# Run from the repository root: SSL_NOISE_DATA=../shared/data bash studies/refine_control/run.sh
set -euo pipefail
CK=${CK:-checkpoints}; RUNS=${RUNS:-runs/refine_control}
sn() { ssl-noise --checkpoints "$CK" --runs "$RUNS" "$@"; }
SIMCLR=$(sn registry ls | awk '/^simclr-resnet18-bloodmnist-e20-s0/ {print $1; exit}')
OUT=studies/refine_control
for seed in 1 2; do
  # no augmentation: the frozen features are encoded once per process, so every refinement round takes seconds
  ce=$(sn finetune --init "$SIMCLR" --freeze --noise 0.4 --noise-seed "$seed" --set augmentation=false --quiet | tail -1)
  lnl=$(sn finetune --init "$SIMCLR" --freeze --method coteaching --noise 0.4 --noise-seed "$seed" \
        --set augmentation=false --quiet | tail -1)
  echo "noise seed $seed: ce $ce, coteaching $lnl"
  sn refine run "$lnl" --rounds 8 --budget 70 --acquisition entropy --quiet
  sn refine run "$lnl" --rounds 8 --budget 70 --acquisition random --quiet
  sn refine run "$lnl" --rounds 8 --budget 0 --quiet
  for session in entropy-b70-s0 random-b70-s0 control-b0-s0; do
    cp "$lnl/refine/$session/rounds.csv" "$OUT/n${seed}_${session%-s0}_rounds.csv"
  done
done
sn refine plot "$OUT"/n*_rounds.csv --label control --label entropy --label random --label control \
   --label entropy --label random --out "$OUT/budget.png" 2> "$OUT/gains.txt"
ssl-noise --runs "$RUNS" report "$RUNS/results.csv" --out "$OUT/report.md" > /dev/null
cp "$RUNS/results.csv" "$OUT/results.csv"
echo done
