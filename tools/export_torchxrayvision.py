#!/usr/bin/env python3
"""Turn a torchxrayvision DenseNet into cxr-triage weights (safetensors) + manifest (JSON).

Needs internet once, to let torchxrayvision download its weights, and
`pip install torch torchxrayvision safetensors`. cxr-triage itself never downloads anything:
the files this writes are what `cxr-triage --model OUT.json` loads.

    python tools/export_torchxrayvision.py --weights densenet121-res224-all --out models/xrv-all
    cxr-triage scan /data/xrays --model models/xrv-all.json

The manifest carries the model's labels (with display names), `output: sigmoid` (multi-label:
one independent probability per label), torchxrayvision's preprocessing (centre crop, 224 px,
8-bit values mapped to [-1024, 1024]) and its per-label operating points (`op_threshs`) as
cxr-triage's operating points: an image is flagged for a label when its probability reaches
that label's threshold, which is what torchxrayvision's `op_norm` calls 0.5.
"""

import argparse
import hashlib
import json
import math
import os
import re
import sys


def label_key(name, i):
    """A column-friendly label: `Lung Opacity` -> `lung_opacity`; blank -> `unused_<i>`."""
    key = re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()
    return key or f"unused_{i}"


def export(model, out_prefix, name, trained_on, targets, op_threshs=None, densenet=None, size=224):
    """Write OUT.safetensors and OUT.json for a torchvision-layout DenseNet `model`.

    `targets`: the model's output names in order (blank names are kept as `unused_<i>`);
    `op_threshs`: one threshold per output or None; `densenet`: the config dict when it is not
    DenseNet-121 (growth_rate, block_config, num_init_features, bn_size).
    """
    import torch
    from safetensors.torch import save_file

    state = {
        k: v.detach().to(torch.float32).contiguous().clone()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked") and k != "op_threshs"
    }
    weights_path = out_prefix + ".safetensors"
    os.makedirs(os.path.dirname(os.path.abspath(weights_path)), exist_ok=True)
    save_file(state, weights_path)
    with open(weights_path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()

    labels, names, ops = [], {}, {}
    for i, target in enumerate(targets):
        key = label_key(target, i)
        labels.append(key)
        shown = target if target else "(not trained)"
        if shown != key:
            names[key] = shown
        if op_threshs is not None:
            t = float(op_threshs[i])
            if not math.isnan(t) and target:
                ops[key] = round(min(max(t, 0.0), 1.0), 6)
    manifest = {
        "name": name,
        "architecture": "densenet121",
        "labels": labels,
        "output": "sigmoid",
        "input": {
            "channels": 1,
            "size": size,
            "crop": "center-square",
            "intensity": "raw",
            "scale": [-1024.0, 1024.0],
            "mean": [0.0],
            "std": [1.0],
        },
        "temperature": 1.0,
        "operating_points": ops,
        "weights": os.path.basename(weights_path),
        "sha256": sha,
        "trained_on": trained_on,
    }
    if densenet is not None:
        manifest["densenet"] = densenet
    if names:
        manifest["label_names"] = names
    with open(out_prefix + ".json", "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return out_prefix + ".json"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="densenet121-res224-all",
                   help="torchxrayvision weights name (default: densenet121-res224-all)")
    p.add_argument("--out", required=True, help="output prefix, e.g. models/xrv-all")
    p.add_argument("--name", help="model name in the manifest (default: xrv-<weights>)")
    args = p.parse_args()

    import torchxrayvision as xrv

    model = xrv.models.DenseNet(weights=args.weights)
    model.eval()
    op = getattr(model, "op_threshs", None)
    path = export(
        model,
        args.out,
        args.name or f"xrv-{args.weights}",
        f"torchxrayvision {xrv.__version__} weights {args.weights} (Cohen et al., MIDL 2022)",
        list(model.targets),
        None if op is None else op.tolist(),
        size=getattr(model, "input_resolution", 224),
    )
    print(f"wrote {path} and {args.out}.safetensors", file=sys.stderr)


if __name__ == "__main__":
    main()
