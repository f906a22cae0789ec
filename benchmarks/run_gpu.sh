#!/usr/bin/env bash
# The GPU runs behind docs/performance.md, in stages (each fits one 10-minute device call).
# Needs diffusers (+ importlib_metadata) wheels in .whl/ where the GPU image lacks them. Results: $OUT/*.json.
set -o pipefail
OUT=${OUT:-benchmarks/results/raw}
mkdir -p "$OUT"
if ls .whl/diffusers-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    $(ls .whl/diffusers-*.whl .whl/importlib_metadata-*.whl 2>/dev/null) && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
S="python3 benchmarks/speed.py --variant wan2.2-i2v-a14b --rank 32 --batch 1"
case "$1" in
  1)
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv
    timeout 200 $S --layers 2 --frames 9 --height 480 --width 832 --precision bf16,fp8 --check --reference \
      --warmup 1 --steps 2 --out $OUT/smoke.json 2>&1 | tee $OUT/smoke.log || exit 1
    timeout 120 $S --layers 4 --frames 9 --height 480 --width 832 --precision fp8 --memory-cap-gib 24 \
      --block-swap 2 --warmup 1 --steps 2 --out $OUT/smoke_swap.json 2>&1 | tee -a $OUT/smoke.log
    timeout 420 $S --frames 81 --height 480 --width 832 --precision bf16,fp8 --reference --warmup 2 --steps 5 \
      --out $OUT/a14b_81f_480x832.json 2>&1 | tee $OUT/main.log
    ;;
  2)
    timeout 330 $S --frames 41 --height 768 --width 768 --precision bf16,fp8 --reference --warmup 2 --steps 5 \
      --out $OUT/a14b_41f_768x768.json 2>&1 | tee $OUT/run2.log
    timeout 250 $S --frames 41 --height 512 --width 512 --precision bf16,fp8 --check --reference --warmup 2 \
      --steps 5 --out $OUT/a14b_41f_512x512.json 2>&1 | tee -a $OUT/run2.log
    ;;
  3)
    export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    timeout 280 $S --frames 41 --height 512 --width 512 --precision fp8 --memory-cap-gib 24 --block-swap ${SWAP512:-4} \
      --warmup 2 --steps 5 --out $OUT/a14b_41f_512x512_cap24.json 2>&1 | tee $OUT/run3.log
    timeout 300 $S --frames 81 --height 480 --width 832 --precision fp8 --memory-cap-gib 24 --block-swap ${SWAP81:-8} \
      --warmup 2 --steps 5 --out $OUT/a14b_81f_480x832_cap24.json 2>&1 | tee -a $OUT/run3.log
    ;;
  4)  # fp8 input gradients (--precision fp8-all): GPU numerics on 2 blocks, then the guide's job shape
    nvidia-smi --query-gpu=name,memory.total --format=csv
    timeout 150 $S --layers 2 --frames 9 --height 480 --width 832 --precision bf16,fp8,fp8-all --check \
      --warmup 1 --steps 2 --out $OUT/smoke_fp8all.json 2>&1 | tee $OUT/run4.log
    timeout 400 $S --frames 41 --height 768 --width 768 --precision bf16,fp8,fp8-all --warmup 2 --steps 3 \
      --out $OUT/a14b_41f_768x768_fp8all.json 2>&1 | tee -a $OUT/run4.log
    ;;
  5)  # fused LoRA (wantune.perf.lora_fused): the guide's job shape with and without, each profiled (device time by
      # kernel category), then numerics on 2 blocks
    nvidia-smi --query-gpu=name,memory.total --format=csv
    timeout 190 $S --frames 41 --height 768 --width 768 --precision fp8-all --warmup 2 --steps 3 --profile \
      --out $OUT/a14b_41f_768x768_fused.json 2>&1 | tee $OUT/run5.log
    timeout 190 $S --frames 41 --height 768 --width 768 --precision fp8-all --warmup 2 --steps 3 --profile \
      --no-fused-lora --out $OUT/a14b_41f_768x768_unfused.json 2>&1 | tee -a $OUT/run5.log
    timeout 90 $S --layers 2 --frames 9 --height 480 --width 832 --precision bf16,fp8-all --check \
      --warmup 1 --steps 2 --out $OUT/smoke_fused.json 2>&1 | tee -a $OUT/run5.log
    ;;
  6)  # session 12: the 8-block profile with fused LoRA + epilogue bias; plain blocks where memory allows; bf16 and
      # fp8-all with fused LoRA against the reference at 81f 480x832
    nvidia-smi --query-gpu=name,memory.total --format=csv
    timeout 100 $S --layers 8 --frames 41 --height 768 --width 768 --precision fp8-all --warmup 2 --steps 2 --profile \
      --out $OUT/a14b_8blocks_41f_768x768_profile_fused.json 2>&1 | tee $OUT/run6.log
    timeout 150 $S --frames 41 --height 768 --width 768 --precision fp8-all --plain-blocks auto --warmup 2 --steps 3 \
      --out $OUT/a14b_41f_768x768_fp8all_plainauto.json 2>&1 | tee -a $OUT/run6.log
    timeout 330 $S --frames 81 --height 480 --width 832 --precision bf16,fp8-all --reference --warmup 2 --steps 3 \
      --out $OUT/a14b_81f_480x832_fused.json 2>&1 | tee -a $OUT/run6.log
    ;;
  7)  # session 12: plain blocks sized by measurement (--plain-blocks auto), the compiled fp8 weight transpose,
      # both A14B experts resident (--idle-expert), a profile with the top aten ops by shape
    nvidia-smi --query-gpu=name,memory.total --format=csv
    timeout 80 $S --layers 2 --frames 9 --height 480 --width 832 --precision bf16,fp8-all --check \
      --warmup 1 --steps 2 --out $OUT/smoke_s12.json 2>&1 | tee $OUT/run7.log
    timeout 160 $S --frames 41 --height 768 --width 768 --precision fp8-all --plain-blocks auto --warmup 2 --steps 3 \
      --out $OUT/a14b_41f_768x768_fp8all_plainfit.json 2>&1 | tee -a $OUT/run7.log
    timeout 130 $S --frames 81 --height 480 --width 832 --precision fp8-all --idle-expert --warmup 1 --steps 2 \
      --out $OUT/a14b_81f_480x832_fp8all_pair.json 2>&1 | tee -a $OUT/run7.log
    timeout 80 $S --layers 8 --frames 41 --height 768 --width 768 --precision fp8-all --warmup 2 --steps 2 --profile \
      --out $OUT/a14b_8blocks_41f_768x768_profile_s12.json 2>&1 | tee -a $OUT/run7.log
    timeout 160 $S --frames 41 --height 768 --width 768 --precision bf16 --plain-blocks auto --warmup 2 --steps 3 \
      --out $OUT/a14b_41f_768x768_bf16_plainfit.json 2>&1 | tee -a $OUT/run7.log
    ;;
  8)  # session 12: cross-attention q/k RMSNorm and q/k/v fused (numerics, the guide's shape), both experts
      # resident at the guide's shape
    nvidia-smi --query-gpu=name,memory.total --format=csv
    timeout 60 $S --layers 2 --frames 9 --height 480 --width 832 --precision bf16,fp8-all --check \
      --warmup 1 --steps 2 --out $OUT/smoke_s12b.json 2>&1 | tee $OUT/run8.log
    timeout 100 $S --frames 41 --height 768 --width 768 --precision fp8-all --warmup 2 --steps 3 \
      --out $OUT/a14b_41f_768x768_fp8all_s12.json 2>&1 | tee -a $OUT/run8.log
    timeout 90 $S --frames 41 --height 768 --width 768 --precision fp8-all --idle-expert --warmup 1 --steps 2 \
      --out $OUT/a14b_41f_768x768_fp8all_pair.json 2>&1 | tee -a $OUT/run8.log
    ;;
  9)  # session 13: q/k/v input gradients as one fp8 matmul (numerics, the guide's shape), 3 plain blocks, the
      # measured plain-block fit with its out-of-memory back-off, the 8-block profile again
    nvidia-smi --query-gpu=name,memory.total --format=csv
    timeout 60 $S --layers 2 --frames 9 --height 480 --width 832 --precision bf16,fp8-all --check \
      --warmup 1 --steps 2 --out $OUT/smoke_s13.json 2>&1 | tee $OUT/run9.log
    timeout 100 $S --frames 41 --height 768 --width 768 --precision fp8-all --warmup 2 --steps 3 \
      --out $OUT/a14b_41f_768x768_fp8all_s13.json 2>&1 | tee -a $OUT/run9.log
    timeout 90 $S --frames 41 --height 768 --width 768 --precision fp8-all --plain-blocks 3 --warmup 1 --steps 3 \
      --out $OUT/a14b_41f_768x768_fp8all_plain3_s13.json 2>&1 | tee -a $OUT/run9.log
    timeout 70 $S --layers 8 --frames 41 --height 768 --width 768 --precision fp8-all --warmup 2 --steps 2 --profile \
      --out $OUT/a14b_8blocks_41f_768x768_profile_s13.json 2>&1 | tee -a $OUT/run9.log
    timeout 160 $S --frames 41 --height 768 --width 768 --precision fp8-all --plain-blocks auto --warmup 1 --steps 2 \
      --out $OUT/a14b_41f_768x768_fp8all_plainauto_s13.json 2>&1 | tee -a $OUT/run9.log
    ;;
  10)  # session 13: the adapter's input gradient in the same fp8 matmul as q/k/v's (and every fused layer's); the
       # same-machine A/B against session 12's code (in .gl/s12, from `git archive 91be1f6 src benchmarks`), the
       # plain-block back-off (expandable segments), the 8-block profile (40 kernels)
    nvidia-smi --query-gpu=name,memory.total --format=csv
    timeout 60 $S --layers 2 --frames 9 --height 480 --width 832 --precision bf16,fp8-all --check \
      --warmup 1 --steps 2 --out $OUT/smoke_s13b.json 2>&1 | tee $OUT/run10.log
    if [ -d .gl/s12 ]; then
      timeout 100 python3 .gl/s12/benchmarks/speed.py --variant wan2.2-i2v-a14b --rank 32 --batch 1 --frames 41 \
        --height 768 --width 768 --precision fp8-all --warmup 2 --steps 3 \
        --out $OUT/a14b_41f_768x768_fp8all_s12code.json 2>&1 | tee -a $OUT/run10.log
    fi
    timeout 100 $S --frames 41 --height 768 --width 768 --precision fp8-all --warmup 2 --steps 3 \
      --out $OUT/a14b_41f_768x768_fp8all_s13b.json 2>&1 | tee -a $OUT/run10.log
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 170 $S --frames 41 --height 768 --width 768 \
      --precision fp8-all --plain-blocks auto --warmup 1 --steps 2 \
      --out $OUT/a14b_41f_768x768_fp8all_plainauto_s13b.json 2>&1 | tee -a $OUT/run10.log
    timeout 70 $S --layers 8 --frames 41 --height 768 --width 768 --precision fp8-all --warmup 2 --steps 2 --profile \
      --out $OUT/a14b_8blocks_41f_768x768_profile_s13b.json 2>&1 | tee -a $OUT/run10.log
    ;;
  11)  # session 13: same-machine A/B of the guide's job, session 12's code (.gl/s12, `git archive 91be1f6 src
       # benchmarks`) against the q/k/v input gradients as one fp8 matmul, each also with 3 plain blocks; then
       # `--plain-blocks auto` sized by the reserved peak
    nvidia-smi --query-gpu=name,memory.total --format=csv
    G="--frames 41 --height 768 --width 768 --precision fp8-all"
    O=".gl/s12/benchmarks/speed.py --variant wan2.2-i2v-a14b --rank 32 --batch 1"
    timeout 100 python3 $O $G --warmup 2 --steps 3 --out $OUT/ab_s12.json 2>&1 | tee $OUT/run11.log
    timeout 100 $S $G --warmup 2 --steps 3 --out $OUT/ab_s13.json 2>&1 | tee -a $OUT/run11.log
    timeout 90 python3 $O $G --plain-blocks 3 --warmup 1 --steps 3 --out $OUT/ab_s12_plain3.json 2>&1 | tee -a $OUT/run11.log
    timeout 90 $S $G --plain-blocks 3 --warmup 1 --steps 3 --out $OUT/ab_s13_plain3.json 2>&1 | tee -a $OUT/run11.log
    timeout 100 $S $G --plain-blocks auto --warmup 1 --steps 2 --out $OUT/ab_s13_plainauto.json 2>&1 | tee -a $OUT/run11.log
    ;;
  12)  # session 13: fast accumulation in the fp8 input-gradient matmuls (.gl/fa: this tree with
       # use_fast_accum=True there): numerics on 2 blocks and the guide's job with 3 plain blocks; this tree's
       # `--plain-blocks auto` (by the estimate: 3) and 4 plain blocks with expandable segments
    nvidia-smi --query-gpu=name,memory.total --format=csv
    G="--frames 41 --height 768 --width 768 --precision fp8-all"
    F=".gl/fa/benchmarks/speed.py --variant wan2.2-i2v-a14b --rank 32 --batch 1"
    timeout 60 python3 $F --layers 2 --frames 9 --height 480 --width 832 --precision fp8-all --check --warmup 1 \
      --steps 2 --out $OUT/fa_check.json 2>&1 | tee $OUT/run12.log
    timeout 90 python3 $F $G --plain-blocks 3 --warmup 1 --steps 3 --out $OUT/fa_plain3.json 2>&1 | tee -a $OUT/run12.log
    timeout 90 $S $G --plain-blocks auto --warmup 1 --steps 3 --out $OUT/s13_plainauto.json 2>&1 | tee -a $OUT/run12.log
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 90 $S $G --plain-blocks 4 --warmup 1 --steps 3 \
      --out $OUT/s13_plain4_expandable.json 2>&1 | tee -a $OUT/run12.log
    ;;
  13)  # session 13, the last device minutes: fast accumulation in the fp8 input-gradient matmuls (.gl/fa) against
       # this tree, both with 3 plain blocks, then the numerics of .gl/fa on 2 blocks
    G="--frames 41 --height 768 --width 768 --precision fp8-all --plain-blocks 3 --warmup 1 --steps 2"
    F=".gl/fa/benchmarks/speed.py --variant wan2.2-i2v-a14b --rank 32 --batch 1"
    timeout 80 python3 $F $G --out $OUT/fa_plain3.json 2>&1 | tee $OUT/run13.log
    timeout 80 $S $G --out $OUT/s13_plain3.json 2>&1 | tee -a $OUT/run13.log
    timeout 60 python3 $F --layers 2 --frames 9 --height 480 --width 832 --precision fp8-all --check --warmup 1 \
      --steps 2 --out $OUT/fa_check.json 2>&1 | tee -a $OUT/run13.log
    ;;
  14)  # session 14: fast accumulation in the fp8 input-gradient matmuls (.gl/fa: this tree with use_fast_accum=True
       # there) against this tree, both with 3 plain blocks, in one call; numerics of .gl/fa on 2 blocks;
       # `--plain-blocks auto` (by the estimate) and 4 plain blocks with expandable segments
    nvidia-smi --query-gpu=name,memory.total --format=csv
    G="--frames 41 --height 768 --width 768 --precision fp8-all --warmup 1 --steps 3"
    F=".gl/fa/benchmarks/speed.py --variant wan2.2-i2v-a14b --rank 32 --batch 1"
    timeout 60 python3 $F --layers 2 --frames 9 --height 480 --width 832 --precision fp8-all --check --warmup 1 \
      --steps 2 --out $OUT/fa_check.json 2>&1 | tee $OUT/run14.log
    timeout 90 python3 $F $G --plain-blocks 3 --out $OUT/fa_plain3.json 2>&1 | tee -a $OUT/run14.log
    timeout 90 $S $G --plain-blocks 3 --out $OUT/s14_plain3.json 2>&1 | tee -a $OUT/run14.log
    timeout 90 $S $G --plain-blocks auto --out $OUT/s14_plainauto.json 2>&1 | tee -a $OUT/run14.log
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 90 python3 $F $G --plain-blocks 4 \
      --out $OUT/fa_plain4_expandable.json 2>&1 | tee -a $OUT/run14.log
    ;;
  15)  # session 14: numerics of fast accumulation in the fp8 input-gradient matmuls (this tree) against plain bf16
       # on 2 blocks, and of the same code without it (.gl/nofa: git archive of a001a3a's src)
    F=".gl/nofa/benchmarks/speed.py --variant wan2.2-i2v-a14b --rank 32 --batch 1"
    C="--layers 2 --frames 9 --height 480 --width 832 --precision bf16,fp8-all --check --warmup 1 --steps 2"
    timeout 90 $S $C --out $OUT/s14_check_vs_bf16.json 2>&1 | tee $OUT/run15.log
    timeout 90 python3 $F $C --out $OUT/nofa_check_vs_bf16.json 2>&1 | tee -a $OUT/run15.log
    ;;
  16)  # session 14, the last device seconds: stage 15's first run only (this tree's fp8-all against plain bf16)
    timeout 100 $S --layers 2 --frames 9 --height 480 --width 832 --precision bf16,fp8-all --check --warmup 1 \
      --steps 2 --out $OUT/s14_check_vs_bf16.json 2>&1 | tee $OUT/run16.log
    ;;
  17)  # session 15: bf16 and fp8-all at 81f 480x832 with this tree's fused LoRA and `--plain-blocks auto` (on an
       # H200 many blocks fit), against the reference in the same process: efficiency and ratio today
    nvidia-smi --query-gpu=name,memory.total --format=csv
    timeout 560 $S --frames 81 --height 480 --width 832 --precision bf16,fp8-all --plain-blocks auto --reference \
      --warmup 1 --steps 3 --out $OUT/a14b_81f_480x832_plainauto_s15.json 2>&1 | tee $OUT/run17.log
    ;;
  18)  # session 16 (little device time left): stage 17's bf16 only, against the reference in the same process
    nvidia-smi --query-gpu=name,memory.total --format=csv
    timeout 420 $S --frames 81 --height 480 --width 832 --precision bf16 --plain-blocks auto --reference \
      --warmup 1 --steps 3 --out $OUT/a14b_81f_480x832_bf16_plainauto_s16.json 2>&1 | tee $OUT/run18.log
    ;;
esac
