#!/usr/bin/env bash
# The GPU measurements this repository asks for, one stage per call (each fits a 10-minute slot; re-running a stage
# skips what is finished, so a stage cut short continues where it stopped):
#
#   scripts/gpu-checks.sh bench        # BERT-base: paper loop, full FT, packed K in {1,5,20,40} x dyn x bf16 x dropout
#   scripts/gpu-checks.sh bench-large  # BERT-large, packed K in {1,5,20}
#   scripts/gpu-checks.sh bench-compile  # BERT-base packed K in {20,40}, bf16, torch.compile modes
#   scripts/gpu-checks.sh mrpc         # MiniLM BitFit on MRPC, 5 seeds, one by one vs packed -> bitfit-compare
#   scripts/gpu-checks.sh sweep        # +experiment=minilm_glue (16 jobs, bitfit packed)
#   scripts/gpu-checks.sh tables       # results/tables/minilm-gpu/ from the sweep's records
#
# Output goes to $OUT (default results/gpu-checks/); GLUE is read from $BITFIT_DATA_DIR (default ../shared/data/glue).
set -euo pipefail
stage=${1:?usage: scripts/gpu-checks.sh bench|bench-large|bench-compile|mrpc|sweep|tables}
out=${OUT:-results/gpu-checks}
data=${BITFIT_DATA_DIR:-../shared/data/glue}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>/dev/null || true

case $stage in
  bench)
    python scripts/bench.py --shape bert_base --json "$out/bench-bert_base.json" | tee "$out/bench-bert_base.txt" ;;
  bench-large)
    python scripts/bench.py --shape bert_large --packed 1 5 20 --steps 20 --json "$out/bench-bert_large.json" \
      | tee "$out/bench-bert_large.txt" ;;
  bench-compile)
    python scripts/bench.py --shape bert_base --packed 20 40 --bf16 on --pad-multiple 16 --no-baselines \
      --compile default reduce-overhead --json "$out/bench-compile.json" | tee "$out/bench-compile.txt" ;;
  mrpc)
    common=(model=minilm task=mrpc "data.dir=$data" method=bitfit optim.lr=1e-3 train.epochs=10
            data.padding=longest data.pad_multiple=16 "seeds=[0,1,2,3,4]" train.progress=false)
    bitfit-run "${common[@]}" "runs_dir=$out/mrpc-one-by-one" | tee "$out/mrpc-one-by-one.log"
    bitfit-run "${common[@]}" "runs_dir=$out/mrpc-packed" train.packed=true | tee "$out/mrpc-packed.log"
    bitfit-compare "$out/mrpc-one-by-one" "$out/mrpc-packed" --csv "$out/mrpc-compare.csv" \
      | tee "$out/mrpc-compare.md" ;;
  sweep)
    bitfit-run +experiment=minilm_glue train.packed=true "data.dir=$data" "runs_dir=$out/minilm-runs" \
      train.progress=false --multirun | tee -a "$out/sweep.log" ;;
  tables)
    bitfit-tables --runs-dir "$out/minilm-runs" --table all --out results/tables/minilm-gpu --expected-seeds 5 ;;
  *)
    echo "error: unknown stage '$stage'; choose bench, bench-large, bench-compile, mrpc, sweep or tables" >&2
    exit 2 ;;
esac
