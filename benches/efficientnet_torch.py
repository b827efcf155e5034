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
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from train_twin import Lite0  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("manifest", nargs="?", default="models/cxr-lite0-v2.json")
    p.add_argument("--runs", type=int, default=9)
    args = p.parse_args()
    path = Path(args.manifest)
    m = json.loads(path.read_text())
    size, channels = m["input"]["size"], m["input"]["channels"]
    net = Lite0(channels, len(m["labels"]), 0.0, 0).eval()
    state = load_file(str(path.parent / m["weights"]))
    own = net.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    assert not missing, missing
    net.load_state_dict(state, strict=False)
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, {size}x{size} input")
    ramp = torch.linspace(0, 1, size * size).reshape(1, 1, size, size).repeat(1, channels, 1, 1)
    x = (ramp - m["input"]["mean"][0]) / m["input"]["std"][0]
    with torch.inference_mode():
        probs = torch.softmax(net(x) / m.get("temperature", 1.0), dim=1)
        print("fixed-input probabilities:", [round(v, 4) for v in probs[0].tolist()])
        for batch in (1, 8):
            xb = x.repeat(batch, 1, 1, 1)
            net(xb)
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                net(xb)
                times.append(time.perf_counter() - t)
            print(f"  batch {batch}: {batch / statistics.median(times):8.1f} images/s")


if __name__ == "__main__":
    main()
