#!/usr/bin/env bash
# Reproduce the shipped toy base model (src/wantune/toy/assets/base/) in one command:
#   bash benchmarks/make_toy_base.sh [WORK]          (one GPU for the VAE and the first pre-training stages)
# These are the stages the shipped weights went through (docs/toy.md, "How the shipped weights were made").
# The VAE stages are time-bounded (--max-minutes), so another GPU lands on a slightly different VAE; the
# judge pass rate of its reconstructions is printed after each stage.
set -euo pipefail
W=${1:-out/toy_base}
export PYTHONUNBUFFERED=1
V="python3 -m wantune.toy.train_vae --steps 100000 --pool 1500 --batch-size 16 --eval-clips 50 --device cuda"
mkdir -p $W
# 1. VAE (Wan 2.1 layout, base_dim 16): from scratch, then three continuations on whole 17-frame clips.
$V --out $W/vae1 --max-minutes 6.3 --base-dim 16 --lr 5e-4
$V --out $W/vae2 --max-minutes 8.2 --short-fraction 0 --init $W/vae1/vae.safetensors --lr 8e-4
$V --out $W/vae3 --max-minutes 8.0 --short-fraction 0 --init $W/vae2/vae.safetensors --lr 1.2e-3 --object-weight 8
$V --out $W/vae4 --max-minutes 8.0 --short-fraction 0 --init $W/vae3/vae.safetensors --lr 6e-4 --object-weight 12
# 2. Transformer (toy-t2v: dim 256, 6 layers; full fine-tuning with wantune train on 8192 base-world clips),
#    four cosine stages, each continuing from the previous stage's EMA weights (about 15 H200 minutes in all).
T="--set training.batch_size=128 --set data.caption_dropout=0.05 --set logging.progress_bar=false
   --set regularisation.ema_decay=0.999 --set data.cache_in_memory=true --set schedule.warmup_ratio=0 --use-ema"
P="python3 -m wantune.toy.pretrain --out $W/pre --clips 8192 --workers 14 --device cuda $T"
$P --vae $W/vae4/vae.safetensors --set training.steps=2 --set schedule.name=constant --set saving.name=warm
$P --set training.steps=3200 --set optimizer.lr=4e-4 --set saving.name=stage1
$P --set training.steps=5400 --set optimizer.lr=5e-4 --set saving.name=stage2
$P --set training.steps=2600 --set optimizer.lr=3e-4 --set saving.name=stage3
$P --set training.steps=1200 --set optimizer.lr=2e-4 --set saving.name=stage4
# 3. VAE decoder only (--decoder-only: the encoder, so the cached latents the transformer learnt, stay as they
#    are): three more stages; the decoder had turned thin crosses into 4-point stars.
$V --out $W/vae5 --max-minutes 5.3 --short-fraction 0 --init $W/vae4/vae.safetensors --decoder-only --lr 8e-4 --object-weight 12
$V --out $W/vae6 --max-minutes 5.5 --short-fraction 0 --init $W/vae5/vae.safetensors --decoder-only --lr 4e-4 --object-weight 12
$V --out $W/vae7 --max-minutes 6.5 --short-fraction 0 --init $W/vae6/vae.safetensors --decoder-only --lr 3e-4 --object-weight 12
cp $W/vae7/vae.safetensors $W/pre/base/vae.safetensors
# Shipped in bfloat16 (computed in float32 on the CPU): transformer and VAE.
for f in $W/pre/base/transformer.safetensors $W/pre/base/vae.safetensors; do python3 benchmarks/to_bf16.py $f; done
# 4. The base model's prompt adherence (benchmarks/results/toy_base.json).
python3 -m wantune.toy.evaluate --base $W/pre/base --concept base --clips 32 --seed 1000
echo "toy base model: $W/pre/base"
