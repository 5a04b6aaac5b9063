#!/usr/bin/env bash
# `make demo`: bring up vLLM for CPU with TP=2 across the built-in local pair,
# ask it one chat question, measure it with a short benchmark, show status,
# tear it down.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out
# this checkout's sparkctl, whichever checkout the shared .venv was installed from
sparkctl=".venv/bin/python -m sparkctl"
inv=inventories/local.yaml
pb=playbooks/tiny-cpu.yaml

# Whatever happens (failure, Ctrl-C), leave nothing running.
trap '$sparkctl down -i "$inv" -q >/dev/null 2>&1 || true' EXIT

echo "== sparkctl up -i $inv -p $pb"
$sparkctl up -i "$inv" -p "$pb"

echo
echo "== one chat completion (the demo model has random weights: expect gibberish)"
curl -sS --max-time 120 http://127.0.0.1:8013/v1/chat/completions \
    -H 'Content-Type: application/json' \
    -d '{"model": "tiny", "messages": [{"role": "user", "content": "Say hello to the Spark owners."}], "max_tokens": 16, "temperature": 0}' \
  | .venv/bin/python -c 'import json,sys; r=json.load(sys.stdin); print("assistant:", repr(r["choices"][0]["message"]["content"])); print("usage:", r["usage"])'

echo
echo "== sparkctl bench -i $inv (a short ladder: 8 requests per step)"
$sparkctl bench -i "$inv" --concurrency 1,4 --input-len 64 --output-len 32 --num-prompts 8 \
    --save-result out/demo-bench.json --plot out/demo-bench.png --report out/demo-report.html

echo
echo "== sparkctl status -i $inv"
$sparkctl status -i "$inv"

echo
echo "== sparkctl down -i $inv"
$sparkctl down -i "$inv"
trap - EXIT

echo
echo "report of this run (one self-contained page, open it in a browser):"
echo "$(pwd)/out/demo-report.html"
