#!/usr/bin/env bash
# candle against PyTorch on the same weights, taking turns: ROUNDS rounds of
# `cxr-triage bench --only inference` then the network's PyTorch twin, each printing images/s at
# batch 1 and 8 (medians of RUNS). Prints one line per run: "candle|torch b1 b8".
# Usage: benches/turns.sh MANIFEST [ROUNDS=4] [RUNS=7] [BIN=target/release/cxr-triage] [PYTHON=python3]
#   benches/turns.sh models/cxrnet-v1.json            # twin: benches/cxrnet_torch.py
#   benches/turns.sh /tmp/xrv-random.json             # twin: benches/densenet_torch.py
#   benches/turns.sh models/cxr-lite0-v2.json         # twin: benches/efficientnet_torch.py
set -euo pipefail
manifest=$1
rounds=${2:-4}
runs=${3:-7}
bin=${4:-target/release/cxr-triage}
python=${5:-python3}
arch=$(sed -n 's/.*"architecture": *"\([^"]*\)".*/\1/p' "$manifest")
case $arch in
  cxrnet) twin=(benches/cxrnet_torch.py "$manifest") ;;
  efficientnet_lite0) twin=(benches/efficientnet_torch.py "$manifest" --runs "$runs") ;;
  *) twin=(benches/densenet_torch.py "$manifest" --runs "$runs") ;;
esac
figures() { grep -o 'batch [18]: *[0-9.]*' | awk '{printf " %s", $3}'; }
for _ in $(seq "$rounds"); do
  echo "candle$("$bin" bench --only inference --model "$manifest" --runs "$runs" 2>&1 | figures)"
  echo "torch$("$python" "${twin[@]}" 2>&1 | figures)"
done
