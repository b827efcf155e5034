"""EfficientNet-Lite0 in PyTorch (the training twin's network, tools/train_twin.py) on the same
weights as cxr-triage, for the candle-vs-PyTorch inference speed comparison. Benchmark only:
torch is never needed by the app, its tests or CI.

    /tmp/torchenv/bin/pip install torch safetensors numpy
    cargo run --release -- bench --only inference --model models/cxr-lite0-v2.json
    /tmp/torchenv/bin/python benches/efficientnet_torch.py models/cxr-lite0-v2.json

Loads the safetensors strictly (every network tensor used; the unusual-input score's tensors
are not part of the network), prints the softmax of the same fixed input `cxr-triage bench`
uses (equal numbers mean equal networks) and images/s at batch 1 and 8 (median of --runs,
after a warm-up).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from train_twin import Lite0  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from twin_common import report  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("manifest", nargs="?", default="models/cxr-lite0-v2.json")
    p.add_argument("--runs", type=int, default=9)
    args = p.parse_args()
    path = Path(args.manifest)
    m = json.loads(path.read_text())
    net = Lite0(m["input"]["channels"], len(m["labels"]), 0.0, 0).eval()
    state = load_file(str(path.parent / m["weights"]))
    own = net.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    assert not missing, missing
    net.load_state_dict(state, strict=False)
    temperature = m.get("temperature", 1.0)
    report(net, m, args.runs, lambda y: torch.softmax(y / temperature, dim=1))


if __name__ == "__main__":
    main()
