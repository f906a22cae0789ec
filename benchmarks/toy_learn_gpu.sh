#!/usr/bin/env bash
# One device call: `wantune bench learn` on the shipped toy base for several LoRA settings side by side (each
# setting's three built-in tasks in one process), and optionally the VAE decoder trained further meanwhile.
#   bash benchmarks/toy_learn_gpu.sh "NAME:STEPS:LR:RANK:CLIPS ..." [VAE_MINUTES]
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
W=$PWD/out/learn; R=${OUT:-$W}; S=$PWD/src/wantune/toy/assets/base; mkdir -p $W
date
if [ -n "$2" ]; then
  V="python3 -m wantune.toy.train_vae --steps 100000 --pool 1500 --batch-size 16 --eval-clips 50 --device cuda
     --short-fraction 0 --decoder-only --init $S/vae.safetensors --object-weight 12 --max-minutes $2 --lr 4e-4"
  timeout 450 $V --out $W/vaeN05 --latent-noise 0.05 > $W/vaeN05.log 2>&1 &
  timeout 450 $V --out $W/vaeN15 --latent-noise 0.15 > $W/vaeN15.log 2>&1 &
fi
for job in $1; do
  IFS=: read name steps lr rank clips <<< "$job"
  for c in character style motion; do
    timeout 470 python3 -m wantune.cli bench learn --concept $c --out $W/$name --steps $steps --lr $lr --rank $rank \
      --clips $clips --eval-clips 16 --device cuda --json > $W/${name}_$c.json 2> $W/${name}_$c.err &
  done
done
wait
date
for f in $W/*_*.json; do python3 -c "import json,sys
r=json.load(open(sys.argv[1]))['results'][0]
open(sys.argv[2], 'a').write(json.dumps({'run': sys.argv[1].split('/')[-1], **r}) + chr(10))
print(sys.argv[1].split('/')[-1], r['adherence_without_lora'], r['base_adherence'],
      {k: (r[k]['adherence_with_lora'], r[k]['preservation_drop'], r[k]['last_loss']) for k in ('no_dop', 'dop')},
      r['seconds'])" $f $R/learn.jsonl 2>/dev/null || { echo "$f failed"; tail -n 3 $W/$(basename $f .json).err; }; done
for v in vaeN05 vaeN15; do
  [ -f $W/$v/vae.safetensors ] || continue
  python3 -c "import json,sys; m=json.load(open(sys.argv[1])); m.pop('history'); print(sys.argv[2], json.dumps(m))" \
    $W/$v/vae_metrics.json $v
  python3 benchmarks/to_bf16.py $W/$v/vae.safetensors $R/$v.safetensors
done
date
