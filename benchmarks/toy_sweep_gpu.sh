#!/usr/bin/env bash
# One device call: several `wantune bench learn` runs side by side on one GPU (a LoRA recipe sweep on the
# shipped toy base), each line of the file "NAME CONCEPT ARGS..." one process; results appended to
# $OUT/sweep.jsonl as {"run": NAME, "args": ..., result...}.
#   bash benchmarks/toy_sweep_gpu.sh RUNS_FILE [SECONDS_PER_RUN]
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
W=$PWD/out/sweep; R=${OUT:-$W}; mkdir -p $W $R; LIMIT=${2:-480}
date
while read -r name concept args; do
  [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
  timeout $LIMIT python3 -m wantune.cli bench learn --concept $concept --out $W/$name --eval-clips 16 --device cuda \
    --json $args > $W/$name.json 2> $W/$name.err &
done < "$1"
wait
date
while read -r name concept args; do
  [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
  python3 - "$W/$name.json" "$name" "$args" "$R/sweep.jsonl" <<'PY' || { echo "$name failed"; tail -n 3 $W/$name.err; }
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
open(sys.argv[4], "a").write(json.dumps({"run": sys.argv[2], "args": sys.argv[3], **r}) + "\n")
runs = {k: (r[k]["adherence_with_lora"], r[k]["preservation_drop"], r[k]["last_loss"]) for k in ("no_dop", "dop") if k in r}
print(sys.argv[2], r["concept"], r["adherence_without_lora"], runs, r["passed_per_attribute"].get("concept_with_lora_no_dop"), r["seconds"])
PY
done < "$1"
