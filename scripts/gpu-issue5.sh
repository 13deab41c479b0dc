#!/bin/bash
# Prepare first: ../shared/gpu/prepare.sh src/SmoaServe; cp scripts/gpu-issue5.sh .device/; then the device tool with
# carry [".device"] and command: bash .device/gpu-issue5.sh
# Issue 5 checks on the H200, one run: parity (f32/bf16, with and without each adapter) and the 8B-shaped decode bench.
here=.device
S="bash $here/on-device.sh smoa.dll"
R=$(pwd); A=$R/tests/fixtures/llama-a
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for dt in float32 bfloat16; do
  timeout 40 $S score --model $A --input $A/expected_base.safetensors --output $OUT/base-$dt.safetensors --device cuda --dtype $dt 2>/dev/null | tail -1
  for ad in smoa-adapter smoa-adapter-layout lora-adapter; do
    timeout 40 $S score --model $A --adapter $A/$ad --input $A/$ad/expected_logits.safetensors --output $OUT/$ad-$dt.safetensors --device cuda --dtype $dt 2>/dev/null | tail -1
  done
  echo "== greedy $dt"; timeout 40 $S generate --model $A --prompt-ids 879,707,320,187,193,403,262 --max-new-tokens 24 --json --device cuda --dtype $dt 2>/dev/null | tail -1
done
python3 - <<'PY'
import os
from safetensors.torch import load_file
out = os.environ["OUT"]; A = "tests/fixtures/llama-a"
print("expected greedy:", load_file(f"{A}/expected_base.safetensors")["greedy_continuation"].tolist())
for dt in ["float32", "bfloat16"]:
    for ad, exp in [("base", f"{A}/expected_base.safetensors")] + [(a, f"{A}/{a}/expected_logits.safetensors") for a in ["smoa-adapter", "smoa-adapter-layout", "lora-adapter"]]:
        p = f"{out}/{ad}-{dt}.safetensors"
        if not os.path.exists(p): print(dt, ad, "MISSING"); continue
        e, g = load_file(exp), load_file(p)
        d = max((g[f"logits_{n}"] - e[f"logits_{n}"]).abs().max().item() for n in range(3))
        agree = sum((g[f"logits_{n}"].argmax(-1) == e[f"logits_{n}"].argmax(-1)).float().mean().item() for n in range(3)) / 3
        print(f"{dt} {ad}: max|dlogit| = {d:.3e}, argmax agreement {agree:.4f}")
PY
M=hidden=4096,layers=32,heads=32,kv_heads=8,ffn=14336,vocab=128256
for b in 16 64; do
  echo "== 8B bench batch $b"
  timeout 100 $S bench decode --synthetic $M --adapter-kind smoa --r 8 --num-blocks 2 --target-modules all --adapters 16 --batch $b --steps 16 --rounds 2 --random-layout --no-swap --device cuda --dtype bfloat16 --json 2>&1 | tail -3
  nvidia-smi --query-gpu=memory.used --format=csv,noheader
done
