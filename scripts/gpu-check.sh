#!/bin/bash
# GPU checks in one run on a CUDA machine (about 6-8 minutes on an H200), from a folder .device/ that holds the
# published `smoa` and this script:
#   ../shared/gpu/prepare.sh src/SmoaServe.Cli && cp scripts/gpu-check.sh .device/ && bash .device/gpu-check.sh
# 1. the 8B-shaped decode bench, batch 16 and 64, both SMoA forms (folded = the CUDA default, anchored = the CPU one);
# 2. parity with the llama-a fixtures on CUDA: float32 and bfloat16, base and every adapter (SMoA in both forms),
#    greedy continuations in both dtypes.
here=.device
S="bash $here/on-device.sh smoa.dll"
R=$(pwd); A=$R/tests/fixtures/llama-a
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

M=hidden=4096,layers=32,heads=32,kv_heads=8,ffn=14336,vocab=128256
bench() { # batch form
  echo "== 8B bench batch $1 $2"
  timeout 110 $S bench decode --synthetic $M --adapter-kind smoa --r 8 --num-blocks 2 --target-modules all --adapters 16 \
    --batch $1 --steps 16 --rounds 2 --random-layout --no-swap --device cuda --dtype bfloat16 --smoa-form $2 --json 2>&1 | tail -4
}
bench 16 folded
bench 16 anchored
bench 64 folded
bench 64 anchored
nvidia-smi --query-gpu=memory.used --format=csv,noheader

score() { # dtype name adapter-dir-or-empty expected form
  local extra=""; [ -n "$3" ] && extra="--adapter $3 --smoa-form $5"
  timeout 40 $S score --model $A $extra --input $4 --output $OUT/$2-$1.safetensors --device cuda --dtype $1 2>&1 | tail -1
}
for dt in float32 bfloat16; do
  score $dt base "" $A/expected_base.safetensors folded
  for ad in smoa-adapter smoa-adapter-layout lora-adapter; do score $dt $ad $A/$ad $A/$ad/expected_logits.safetensors folded; done
  for ad in smoa-adapter smoa-adapter-layout; do score $dt $ad-anchored $A/$ad $A/$ad/expected_logits.safetensors anchored; done
  echo "== greedy $dt"; timeout 40 $S generate --model $A --prompt-ids 879,707,320,187,193,403,262 --max-new-tokens 24 --json --device cuda --dtype $dt 2>/dev/null | tail -1
done
python3 - <<'PY'
import os
from safetensors.torch import load_file
out = os.environ["OUT"]; A = "tests/fixtures/llama-a"
print("expected greedy:", load_file(f"{A}/expected_base.safetensors")["greedy_continuation"].tolist())
runs = [("base", f"{A}/expected_base.safetensors")]
for a in ["smoa-adapter", "smoa-adapter-layout", "lora-adapter"]: runs.append((a, f"{A}/{a}/expected_logits.safetensors"))
for a in ["smoa-adapter", "smoa-adapter-layout"]: runs.append((a + "-anchored", f"{A}/{a}/expected_logits.safetensors"))
for dt in ["float32", "bfloat16"]:
    for name, exp in runs:
        p = f"{out}/{name}-{dt}.safetensors"
        if not os.path.exists(p): print(dt, name, "MISSING"); continue
        e, g = load_file(exp), load_file(p)
        d = max((g[f"logits_{n}"].float() - e[f"logits_{n}"].float()).abs().max().item() for n in range(3))
        agree = sum((g[f"logits_{n}"].argmax(-1) == e[f"logits_{n}"].argmax(-1)).float().mean().item() for n in range(3)) / 3
        print(f"{dt} {name}: max|dlogit| = {d:.3e}, argmax agreement {agree:.4f}")
PY
