#!/usr/bin/env bash
# Sparse training end to end on Fashion-MNIST: throughput and accuracy of pruned runs beside dense ones,
# all on this machine, one after the other, same threads and batch.
#
#   bench/sparse_train.sh                      # throughput: PyTorch dense, Trainer dense, Trainer at 90%
#                                              #   sparsity with each policy (200 steps each)
#   bench/sparse_train.sh --accuracy --epochs 4
#                                              # accuracy table: dense, then policy x sparsity 80/90/95%
#   options: --model resnet20 --width 16 --threads 2 --batch-size 128 --steps 200 --sparsities "0.8 0.9 0.95"
#            --policies "magnitude dns rigl" --distribution erk|uniform|global --kernels auto|sparse|dense
#            --calibration FILE --no-torch
#            --rounds N   (throughput mode: the whole sequence N times; the median of each run's images/s)
#            --prune-args "--prune-end 0.5 --prune-every 50"   (added to every pruned run, both modes;
#                                                              e.g. "--prune-erk-power 1", ERK as
#                                                              published, or "--dns-dense-every 1")
#            --runs "dense magnitude:0.9 rigl:0.95"   (accuracy mode: exactly these runs, in this order;
#                                                      e.g. to split the table over two processes)
#
# Throughput mode measures the steady state at the target: masks at the final sparsity from the first
# step (--initial-sparsity = --sparsity, pruning from step 0), so that no dense warm-up is in the
# timing. Accuracy mode trains the whole schedule (magnitude and dns prune gradually from 10% to 75% of
# the run; rigl holds the sparsity from the start and stops updating masks at 75%).
#
# Recipe (every run): SGD momentum 0.9 Nesterov, weight decay 5e-4, one-cycle schedule (peak lr 0.1),
# Kaiming init, crop 2 + flip augmentation for accuracy runs, batch 128, 2 threads; the pruning options
# the trainer's defaults unless --distribution / --prune-args say otherwise. Run on a quiet
# machine: with 2 threads any other load distorts timings (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."

model=resnet20
width=16
threads=2
batch=128
steps=200
rounds=1
epochs=4
accuracy=0
sparsities="0.8 0.9 0.95"
policies="magnitude dns rigl"
distribution=erk  # the trainer's default (to its default power, 0.75; docs/sparse-training.md "Defaults")
kernels=auto
calibration=()
torch=1
runs=""
prune_args=""
data_dir=/usr/share/datasets/fashion-mnist
while (( $# )); do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --width) width="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --batch-size) batch="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --accuracy) accuracy=1; shift ;;
    --sparsities) sparsities="$2"; shift 2 ;;
    --policies) policies="$2"; shift 2 ;;
    --distribution) distribution="$2"; shift 2 ;;
    --kernels) kernels="$2"; shift 2 ;;
    --calibration) calibration=(--calibration "$2"); shift 2 ;;
    --no-torch) torch=0; shift ;;
    --runs) runs="$2"; shift 2 ;;
    --prune-args) prune_args="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    *) echo "sparse_train.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "sparse_train.sh: --rounds must be a positive integer, got '$rounds'" >&2; exit 2; }

if (( torch )); then TRAINER_WITH_TORCH=1 scripts/install-deps >/dev/null; else scripts/install-deps >/dev/null; fi
scripts/build >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

summarise() {  # metrics file -> "images_per_s test_acc sparsity"
  /usr/bin/python3 - "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if "epoch" in r]
ips = sum(r["images_per_s"] for r in rows) / len(rows)
acc = rows[-1].get("test_acc")
sp = rows[-1].get("sparsity", 0.0)
print(f"{ips:.1f} {acc if acc is not None else float('nan'):.4f} {sp:.4f}")
PY
}

common=(--model "$model" --width "$width" --batch-size "$batch" --threads "$threads" --data-dir "$data_dir"
        --lr 0.1 --schedule onecycle --nesterov --momentum 0.9 --weight-decay 5e-4 --init kaiming
        --progress off --no-ops-summary)

run_trainer() {  # name, extra args...
  local name="$1"; shift
  OMP_NUM_THREADS=$threads build/trainer train "${common[@]}" --metrics "$out/$name.jsonl" "$@" \
    > "$out/$name.log" 2> "$out/$name.err" || { cat "$out/$name.err" >&2; exit 1; }
  summarise "$out/$name.jsonl"
}

if (( accuracy == 0 )); then
  run=(--epochs 1 --max-steps "$steps" --eval-every 1)
  # Every run of the sequence once per round, the rounds one after the other (so that a slow moment of
  # the machine falls on all runs of a round alike); the table gives each round's images/s and their
  # median, and the ratios are of the medians.
  names=()
  declare -A ips_of=() sp_of=()
  add() {  # name images/s [sparsity]
    [[ -z "${ips_of[$1]+x}" ]] && names+=("$1")
    ips_of[$1]="${ips_of[$1]:+${ips_of[$1]} }$2"
    [[ -n "${3:-}" ]] && sp_of[$1]="$3"
    return 0
  }
  for (( round = 1; round <= rounds; ++round )); do
    if (( torch )); then
      /usr/bin/python3 bench/pytorch_train.py --model "$model" --width "$width" --epochs 1 --max-steps "$steps" \
        --batch-size "$batch" --lr 0.1 --threads "$threads" --data-dir "$data_dir" > "$out/torch.jsonl"
      read -r ips _ _ < <(summarise "$out/torch.jsonl")
      add "pytorch dense" "$ips"
    fi
    read -r ips _ _ < <(run_trainer dense "${run[@]}")
    add "trainer dense" "$ips"
    for s in $sparsities; do
      for p in $policies; do
        read -r ips _ sp < <(run_trainer "$p-$s" "${run[@]}" --prune "$p" --sparsity "$s" --initial-sparsity "$s" \
          --prune-begin 0 --prune-distribution "$distribution" --kernels "$kernels" "${calibration[@]}" $prune_args)
        add "$p $s" "$ips" "$sp"
      done
    done
  done
  median() { tr ' ' '\n' <<< "$1" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
  torch_ips=""; (( torch )) && torch_ips=$(median "${ips_of[pytorch dense]}")
  dense_ips=$(median "${ips_of[trainer dense]}")
  if (( rounds > 1 )); then
    printf '%-22s %10s %12s %12s   %s\n' run "images/s" "vs dense" "vs pytorch" "each round"
  else
    printf '%-22s %10s %12s %12s\n' run "images/s" "vs dense" "vs pytorch"
  fi
  for name in "${names[@]}"; do
    ips=$(median "${ips_of[$name]}")
    vs_d=""; [[ "$name" != "pytorch dense" ]] && vs_d=$(awk -v a="$ips" -v b="$dense_ips" 'BEGIN{printf "%.2f", a/b}')
    vs_t=""; [[ -n "$torch_ips" ]] && vs_t=$(awk -v a="$ips" -v b="$torch_ips" 'BEGIN{printf "%.2f", a/b}')
    line=$(printf '%-22s %10.0f %12s %12s' "$name" "$ips" "$vs_d" "$vs_t")
    [[ -n "${sp_of[$name]+x}" ]] && line+=$(printf '   (sparsity %.1f%%)' "$(awk -v x="${sp_of[$name]}" 'BEGIN{print 100*x}')")
    (( rounds > 1 )) && line+="   $(awk '{for (i = 1; i <= NF; ++i) printf "%s%.0f", (i > 1 ? " / " : ""), $i}' <<< "${ips_of[$name]}")"
    echo "$line"
  done
else
  run=(--epochs "$epochs" --augment-crop 2 --augment-flip)
  if [[ -z "$runs" ]]; then
    runs="dense"
    for p in $policies; do for s in $sparsities; do runs+=" $p:$s"; done; done
  fi
  printf '%-12s %9s %10s %10s %10s %12s\n' policy sparsity "test acc" "vs dense" "images/s" "measured sp"
  dense_acc=""
  for item in $runs; do
    if [[ "$item" == dense ]]; then
      read -r ips acc _ < <(run_trainer dense "${run[@]}")
      dense_acc="$acc"
      printf '%-12s %9s %9.2f%% %10s %10.0f %12s\n' dense 0 "$(awk -v a="$acc" 'BEGIN{print 100*a}')" "" "$ips" ""
      continue
    fi
    p="${item%%:*}"; s="${item#*:}"
    read -r ips acc sp < <(run_trainer "$p-$s" "${run[@]}" --prune "$p" --sparsity "$s" \
      --prune-distribution "$distribution" --kernels "$kernels" "${calibration[@]}" $prune_args)
    vs=""; [[ -n "$dense_acc" ]] && vs=$(awk -v a="$acc" -v b="$dense_acc" 'BEGIN{printf "%+.2f", 100*(a-b)}')
    printf '%-12s %9s %9.2f%% %10s %10.0f %11.1f%%\n' "$p" "$s" "$(awk -v a="$acc" 'BEGIN{print 100*a}')" "$vs" \
      "$ips" "$(awk -v x="$sp" 'BEGIN{print 100*x}')"
  done
fi
