#!/usr/bin/env bash
# On a GPU machine: `sparkctl status` of a one-node local inventory, idle and
# under load, plus nvidia-smi's CSV for the same fields, as fixtures and evidence
# for the NVML telemetry path (results in $OUT, or ./out).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out}
mkdir -p "$out"
inv=$(mktemp --suffix=.yaml)
printf 'cluster: gpu-one\nnodes:\n  - name: gpu0\n    connection: local\n    fabric_ip: 127.0.0.1\n' > "$inv"
fields=index,name,utilization.gpu,power.draw,temperature.gpu,clocks.sm,clocks.mem,memory.used,memory.total
nvidia-smi --query-gpu=$fields --format=csv,noheader,nounits > "$out/nvidia-smi-query-idle.csv"
python3 -m sparkctl status -i "$inv" --json --sample 0 > "$out/status-idle.json" || true
python3 scripts/gpu_busy.py 25 &
busy=$!
sleep 8
nvidia-smi --query-gpu=$fields --format=csv,noheader,nounits > "$out/nvidia-smi-query-busy.csv"
python3 -m sparkctl status -i "$inv" --json --sample 0 > "$out/status-busy.json" || true
start=$(date +%s.%N)
for _ in 1 2 3 4 5; do python3 -m sparkctl status -i "$inv" --json --sample 0 > /dev/null || true; done
end=$(date +%s.%N)
echo "5 status runs: $(echo "$end - $start" | bc) s" | tee "$out/status-timing.txt"
wait $busy
nvidia-smi -q > "$out/nvidia-smi-q.txt"
