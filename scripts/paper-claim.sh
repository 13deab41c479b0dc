#!/usr/bin/env bash
# The paper's claim in miniature: SMoA (K = 2 and 4) against LoRA and HiRA (K = 1) at equal trainable-parameter
# budgets, on a task a tiny model can learn, with a held-out split. Trains four adapters with `smoa train` on the same
# data and seed, then serves them together with `smoa serve` and scores greedy answers on the held-out prompts.
# Prints a markdown table: trainable parameters, validation loss and token accuracy (from `smoa train --validation`),
# held-out exact match, training tokens/s.
#
# The task: 8 categories × 12 words; a prompt asks for the category of a word in one of 6 phrasings. Training uses 4
# phrasings of every word, the held-out split the other 2, so the adapter must map each word to its category across
# phrasings it never saw with that word.
#
# Usage: scripts/paper-claim.sh [MODEL_DIR] [BUDGET_RANK]     (default tests/fixtures/llama-a, 4)
# Budgets: LoRA r = B and HiRA r = B have B·(m+n) parameters per module; SMoA with K blocks of (m/K)×(n/K) and rank
# r = K·B has the same. Environment: EPOCHS (default 20), SEED (7), LR_SMOA (0.1), LR_LORA (0.02).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model=${1:-$root/tests/fixtures/llama-a}
budget=${2:-4}
epochs=${EPOCHS:-20}; seed=${SEED:-7}; lr_smoa=${LR_SMOA:-0.1}; lr_lora=${LR_LORA:-0.02}
work=$(mktemp -d /tmp/smoa-paper-claim.XXXXXX)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
"$root/smoa" --help >/dev/null   # builds the CLI when needed
dll="$root/src/SmoaServe.Cli/bin/Release/net10.0/smoa.dll"

python3 - "$work" <<'PY'
import json, random, sys
work = sys.argv[1]
cats = {
  "animal": "cat dog horse mouse tiger eagle snake whale rabbit goat sheep wolf",
  "color": "red blue green yellow purple orange black white brown pink grey violet",
  "fruit": "apple banana cherry grape lemon mango melon peach pear plum kiwi lime",
  "tool": "hammer saw drill wrench chisel pliers shovel rake axe file clamp ladder",
  "metal": "iron copper silver gold zinc tin lead nickel cobalt chrome steel bronze",
  "city": "paris london rome tokyo cairo lima oslo delhi dublin vienna berlin madrid",
  "sport": "tennis golf rugby hockey boxing skiing rowing cycling fencing judo polo darts",
  "number": "one two three four five six seven eight nine ten eleven twelve",
}
phr = ["What kind of thing is {w}?", "Category of {w}:", "Classify the word {w}.", "{w} belongs to which group?",
       "Tell me the class of {w}.", "Which category fits {w}?"]
train, held = [], []
for c, words in cats.items():
    for w in words.split():
        for i, p in enumerate(phr):
            ex = {"messages": [{"role": "user", "content": p.format(w=w)}, {"role": "assistant", "content": c}]}
            (train if i < 4 else held).append(ex)
random.Random(0).shuffle(train); random.Random(1).shuffle(held)
held = held[:96]
with open(f"{work}/train.jsonl", "w") as f: f.writelines(json.dumps(e) + "\n" for e in train)
with open(f"{work}/valid.jsonl", "w") as f: f.writelines(json.dumps(e) + "\n" for e in held)
print(f"{len(train)} training, {len(held)} held-out conversations", file=sys.stderr)
PY

train() {  # name method r k lr
  local name=$1 method=$2 r=$3 k=$4 lr=$5 extra=()
  [ "$method" = smoa ] && extra=(--num-blocks "$k")
  nice -n 10 dotnet "$dll" train --model "$model" --data "$work/train.jsonl" --validation "$work/valid.jsonl" --out "$work/$name" \
    --method "$method" --r "$r" "${extra[@]}" --lora-alpha $((2 * r)) --epochs "$epochs" --batch-size 16 --micro-batch-size 16 \
    --learning-rate "$lr" --warmup-ratio 0.05 --seed "$seed" --eval-steps 1000000 --max-seq-len 64 2> "$work/$name.log"
}
train lora lora "$budget" 1 "$lr_lora"
train hira smoa "$budget" 1 "$lr_smoa"
train smoa-k2 smoa $((2 * budget)) 2 "$lr_smoa"
train smoa-k4 smoa $((4 * budget)) 4 "$lr_smoa"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SMOA_ADMIN_KEY=paper-claim Serilog__MinimumLevel__Default=Warning dotnet "$dll" serve --model "$model" --data "$work/data" \
  --urls "http://127.0.0.1:$port" --adapters-dir "$work/none" --served-model-name base \
  --adapter lora="$work/lora" --adapter hira="$work/hira" --adapter smoa-k2="$work/smoa-k2" --adapter smoa-k4="$work/smoa-k4" \
  > "$work/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "smoa serve did not start:" >&2; tail -20 "$work/serve.log" >&2; exit 1; }

python3 - "$work" "$port" <<'PY'
import json, re, sys, urllib.request
work, port = sys.argv[1], sys.argv[2]
held = [json.loads(l) for l in open(f"{work}/valid.jsonl")]
def ask(model, prompt):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                 {"Content-Type": "application/json", "Authorization": "Bearer paper-claim"})
    return json.load(urllib.request.urlopen(req))["choices"][0]["message"]["content"].strip()
rows = [("LoRA", "lora"), ("HiRA (SMoA K=1)", "hira"), ("SMoA K=2", "smoa-k2"), ("SMoA K=4", "smoa-k4"), ("base (no adapter)", "base")]
print("| method | rank | trainable parameters | held-out loss | held-out token accuracy | held-out exact match | training tokens/s |")
print("|---|---|---|---|---|---|---|")
for label, name in rows:
    correct = sum(ask(name, e["messages"][0]["content"]) == e["messages"][1]["content"] for e in held)
    if name == "base":
        print(f"| {label} | – | 0 | – | – | {correct}/{len(held)} | – |"); continue
    log = open(f"{work}/{name}.log").read()
    params = re.search(r"adapter: (\S+) r=(\d+).*?: ([\d,]+) parameters", log)
    val = re.findall(r"validation loss ([\d.]+), token accuracy ([\d.]+) %", log)[-1]
    tps = re.search(r"([\d,]+) tok/s\)?\s*$", log.strip().splitlines()[-1]) or re.findall(r"([\d,]+) tok/s", log)
    tps = tps.group(1) if hasattr(tps, "group") else tps[-1]
    print(f"| {label} | {params.group(2)} | {params.group(3)} | {float(val[0]):.3f} | {val[1]} % | {correct}/{len(held)} | {tps} |")
PY
