#!/usr/bin/env bash
# Trains the same model with the same recipe, batch, threads and data through Trainer and through
# PyTorch (Debian python3-torch, /usr/bin/python3), one after the other on this machine, and prints
# images/s and test accuracy of both and their ratio.
#
#   bench/compare_pytorch.sh                       # lenet5 and resnet8 (width 16), 2 epochs each
#   bench/compare_pytorch.sh --models "lenet5" --epochs 10
#   bench/compare_pytorch.sh --max-steps 100       # throughput only: 100 steps per epoch, 1 epoch
#
# Recipe (both sides): SGD, momentum 0.9, nesterov, weight decay 5e-4 (not on biases/BN), one-cycle
# schedule (max lr --lr), batch 128, no augmentation, normalisation by the training set's mean/std.
set -euo pipefail
cd "$(dirname "$0")/.."

models="lenet5 resnet8"
epochs=2
threads=2
batch=128
lr=0.05
max_steps=0
data_dir=/usr/share/datasets/fashion-mnist
while (( $# )); do
  case "$1" in
    --models) models="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --batch-size) batch="$2"; shift 2 ;;
    --lr) lr="$2"; shift 2 ;;
    --max-steps) max_steps="$2"; epochs=1; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    *) echo "compare_pytorch.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

TRAINER_WITH_TORCH=1 scripts/install-deps >/dev/null
scripts/build >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

summarise() {  # file -> "images_per_s test_acc" (mean images/s over epochs, last test accuracy)
  /usr/bin/python3 - "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if "epoch" in r]
ips = sum(r["images_per_s"] for r in rows) / len(rows)
print(f"{ips:.1f} {rows[-1]['test_acc']:.4f}")
PY
}

printf '%-10s %6s %14s %14s %8s %10s %10s\n' model epochs "trainer im/s" "pytorch im/s" ratio "trainer acc" "torch acc"
for m in $models; do
  extra=()
  (( max_steps > 0 )) && extra+=(--max-steps "$max_steps")
  OMP_NUM_THREADS=$threads build/trainer train --model "$m" --epochs "$epochs" --batch-size "$batch" \
    --lr "$lr" --schedule onecycle --nesterov --momentum 0.9 --weight-decay 5e-4 --threads "$threads" \
    --data-dir "$data_dir" --metrics "$out/$m.trainer.jsonl" --progress off --no-ops-summary "${extra[@]}" \
    > "$out/$m.trainer.log"
  /usr/bin/python3 bench/pytorch_train.py --model "$m" --epochs "$epochs" --batch-size "$batch" --lr "$lr" \
    --threads "$threads" --data-dir "$data_dir" "${extra[@]}" > "$out/$m.torch.jsonl"
  read -r t_ips t_acc < <(summarise "$out/$m.trainer.jsonl")
  read -r p_ips p_acc < <(summarise "$out/$m.torch.jsonl")
  ratio=$(/usr/bin/python3 -c "print(f'{$t_ips/$p_ips:.2f}')")
  printf '%-10s %6s %14s %14s %8s %10s %10s\n' "$m" "$epochs" "$t_ips" "$p_ips" "$ratio" "$t_acc" "$p_acc"
done
