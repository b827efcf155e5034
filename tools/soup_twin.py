"""Weight averaging ("model soup", Wortsman et al. 2022) of EfficientNet-Lite0 fine-tunings that
started from the same ImageNet weights: one network, no extra cost at inference. Research aid
beside tools/train_twin.py: never needed by the app, its tests or CI.

Every ingredient is first scored alone on the pooled val split of the exported views (the same
tensors `train` and `eval` use). Then the greedy soup: ingredients in order of their val score,
each kept only if the average with it scores better on val. After each average the batch-norm
running statistics are measured again on train views (an average of weights is not an average of
their statistics). Nothing but val is looked at; ext-normal and test never are.

Val score: COVID-19 specificity at the operating point (the highest P(covid) threshold keeping
pooled val COVID-19 sensitivity >= 95 %, as `train --epochs 0` chooses it) plus the pooled macro
ROC AUC, since the flag is what the user sees.

    ~/torchenv/bin/python tools/soup_twin.py --views ~/cxr-work/views --like TWIN.json \\
        --out ~/cxr-work/soup/cxr-lite0-soup A.safetensors B.safetensors C.ckpt.pt ...
    cxr-triage train ... --init ~/cxr-work/soup/cxr-lite0-soup.json --epochs 0 --out DIR
"""

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from train_twin import Lite0, macro_auc


def load(path):
    if path.suffix == ".pt":
        return {k: v for k, v in torch.load(path)["net"].items() if not k.endswith("num_batches_tracked")}
    return load_file(str(path))


def operating_point(probs, y, covid, sensitivity=0.95):
    """(threshold, specificity): highest threshold with COVID-19 sensitivity >= `sensitivity`."""
    pos = np.sort(probs[y == covid, covid])[::-1]
    need = int(np.ceil(sensitivity * len(pos)))
    t = pos[need - 1]
    neg = probs[y != covid, covid]
    return float(t), float((neg < t).mean())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--views", required=True, type=Path)
    p.add_argument("--like", required=True, type=Path, help="a twin manifest (labels, input) to copy")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--bn-images", type=int, default=2048, help="train views used to re-measure batch norms")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("ingredients", nargs="+", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    index = json.loads((args.views / "index.json").read_text())
    spec, labels, views = index["input"], index["labels"], index["views"]
    size, k = spec["size"], len(labels)
    covid = labels.index("covid")
    n = len(index["train"]["label"])
    train = np.memmap(args.views / "train.u16", dtype="<u2", mode="r", shape=(n, views, size, size))
    val = np.fromfile(args.views / "val.u16", dtype="<u2").reshape(-1, size, size)
    y_val = np.array(index["val"]["label"])
    src_val = np.array(index["val"]["source"])
    lo, hi = spec["scale"]
    mean, std = spec["mean"][0], spec["std"][0]

    def tensor(u16):
        x = torch.from_numpy(u16.astype(np.float32) / 65535.0)
        return ((lo + x * (hi - lo) - mean) / std).unsqueeze(1)

    net = Lite0(spec["channels"], k, 0.0, 0)
    rng = np.random.default_rng(0)
    bn_idx = np.sort(rng.choice(n, min(args.bn_images, n), replace=False))

    def recalibrate():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the pass
        net.train()
        with torch.no_grad():
            for i in range(0, len(bn_idx), 64):
                idx = bn_idx[i:i + 64]
                view = (i // 64) % views
                net(tensor(np.asarray(train[idx, view])))

    def score(state, bn):
        net.load_state_dict(state, strict=False)
        if bn:
            recalibrate()
        net.eval()
        with torch.no_grad():
            probs = torch.cat([F.softmax(net(tensor(val[i:i + 64])), 1) for i in range(0, len(val), 64)]).numpy()
        auc = macro_auc(probs, y_val, k)
        t, spec_ = operating_point(probs, y_val, covid)
        per = []
        for s, name in enumerate(index["sources"]):
            m = src_val == s
            if m.any():
                per.append(f"{name} AUC {macro_auc(probs[m], y_val[m], k):.4f} "
                           f"spec {(probs[m & (y_val != covid), covid] < t).mean():.3f}")
        acc = float((probs.argmax(1) == y_val).mean())
        text = f"acc {acc:.3f} macro AUC {auc:.4f} op {t:.3f} spec {spec_:.3f}; " + "; ".join(per)
        return spec_ + auc, text, {k_: v.clone() for k_, v in net.state_dict().items()
                                   if not k_.endswith("num_batches_tracked")}

    alone = []
    for path in args.ingredients:
        state = load(path)
        s, text, _ = score(state, bn=False)
        print(f"alone {path}: score {s:.4f}; {text}", flush=True)
        alone.append((s, path, state))
    alone.sort(key=lambda a: -a[0])
    best_s, _, best_state = score(alone[0][2], bn=False)
    soup = [alone[0]]
    print(f"soup starts with {alone[0][1]}", flush=True)
    for s_alone, path, state in alone[1:]:
        members = soup + [(s_alone, path, state)]
        avg = {name: sum(m[2][name].float() for m in members) / len(members) for name in members[0][2]}
        s, text, measured = score(avg, bn=True)
        kept = s > best_s
        print(f"soup + {path} ({len(members)} members): score {s:.4f} {'kept' if kept else 'dropped'}; {text}",
              flush=True)
        if kept:
            soup, best_s, best_state = members, s, measured

    args.out.parent.mkdir(parents=True, exist_ok=True)
    weights = args.out.with_suffix(".safetensors")
    save_file({name: t.contiguous() for name, t in best_state.items()}, str(weights))
    like = json.loads(args.like.read_text())
    manifest = dict(like)
    manifest.update({
        "name": args.out.name,
        "weights": weights.name,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "trained_on": f"{'+'.join(index['sources'])} train splits (tools/soup_twin.py: the average of "
                      f"{', '.join(m[1].parent.name + '/' + m[1].name for m in soup)}, batch norms re-measured)",
    })
    args.out.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"RESULT soup of {len(soup)}: score {best_s:.4f}; wrote {args.out.with_suffix('.json')}", flush=True)


if __name__ == "__main__":
    main()
