"""DenseNet-121 in PyTorch (torchxrayvision's class) on the same weights as cxr-triage, for the
candle-vs-PyTorch inference speed comparison. Benchmark only: never needed by the app, its
tests or CI.

    /tmp/torchenv/bin/pip install torch torchxrayvision safetensors
    /tmp/torchenv/bin/python benches/densenet_torch.py --make /tmp/xrv-random   # seeded weights
    cargo run --release -- bench --only inference --model /tmp/xrv-random.json
    /tmp/torchenv/bin/python benches/densenet_torch.py /tmp/xrv-random.json

`--make PREFIX` builds torchxrayvision's DenseNet-121 (18 labels) with `weights=None` (nothing
is downloaded), seeded random weights, and exports it with tools/export_torchxrayvision.py.
Given a manifest, it loads the safetensors into torchxrayvision's DenseNet (strict: every
tensor used), prints the sigmoid of the same fixed input `cxr-triage bench` uses (equal numbers
mean equal networks), and images/s at batch 1 and 8 (median of --runs, after a warm-up).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torchxrayvision as xrv
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from export_torchxrayvision import export  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from twin_common import report  # noqa: E402


def make(prefix):
    torch.manual_seed(121)
    net = xrv.models.DenseNet(weights=None).eval()
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn_like(t) * 0.1)
    return export(net, prefix, "xrv-densenet121-random", "seeded random weights (benchmark)",
                  list(xrv.datasets.default_pathologies))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("manifest", nargs="?")
    p.add_argument("--make", metavar="PREFIX")
    p.add_argument("--runs", type=int, default=9)
    args = p.parse_args()
    if args.make:
        print("wrote", make(args.make))
        return
    path = Path(args.manifest)
    m = json.loads(path.read_text())
    cfg = m.get("densenet") or {}
    net = xrv.models.DenseNet(
        weights=None,
        num_classes=len(m["labels"]),
        in_channels=m["input"]["channels"],
        apply_sigmoid=True,
        growth_rate=cfg.get("growth_rate", 32),
        block_config=tuple(cfg.get("block_config", (6, 12, 24, 16))),
        num_init_features=cfg.get("num_init_features", 64),
        bn_size=cfg.get("bn_size", 4),
    ).eval()
    state = load_file(str(path.parent / m["weights"]))
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked") and k != "op_threshs"]
    assert not missing and not unexpected, (missing, unexpected)
    report(net, m, args.runs, lambda y: y)  # apply_sigmoid: the output is the probabilities


if __name__ == "__main__":
    main()
