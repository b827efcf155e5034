"""PyTorch twin of `cxr-triage train` for EfficientNet-Lite0: the same recipe on the same input
tensors, several times faster on a CPU. Research aid: never needed by the app, its tests or CI.

The twin never decodes or augments an image itself. `cxr-triage train --export-views DIR` writes
what it trains on: VIEWS augmented planes of every train image (made by `train`'s own
`augment`, seeded), the centre view of every val image (`preprocess`, the one preprocessing
function), labels, sources and per-sample loss weights. So its inputs are ours by construction
(`tests/it/train.rs` checks the exported planes against `preprocess`). Epoch e trains on view
e mod VIEWS. Then `cxr-triage train --init OUT.json --epochs 0` calibrates the temperature,
the operating point and the unusual-input score in candle, and `eval` reports.

    python3 -m venv ~/torchenv && ~/torchenv/bin/pip install torch numpy safetensors
    cargo run --release -- train --data A --data B ... --init BASE.json --out X \\
        --export-views ~/cxr-work/views --views 6
    ~/torchenv/bin/python tools/train_twin.py --views ~/cxr-work/views --init BASE.json \\
        --out ~/cxr-work/twin/cxr-lite0-twin --epochs 6

Recipe (as `train`): AdamW (weight decay 1e-4), one epoch of warm-up then cosine decay to 2 %,
cross-entropy with label smoothing 0.05 weighted per sample, dropout before the classifier, the
first --freeze-blocks blocks (and the stem) not optimised (their batch norms still adapt), the
best epoch by pooled val macro AUC + 0.1 x val accuracy (--select auc) or by the pooled val
specificity at 95 % COVID-19 sensitivity + 0.1 x macro AUC (--select oppoint). Checkpoint
after every epoch; --resume continues.

--adversary W (off by default; an experiment, see the model card): a class-conditional source
adversary. One small head per label predicts, from the pooled features of an image of that label,
which data set it came from; its gradient reaches the network reversed (gradient reversal, DANN)
and scaled by W x (2 / (1 + exp(-10 p)) - 1), p the fraction of training done. The network is
pushed to make a normal film from NIH and a normal film from siim-covid look alike to that head,
while the classifier still separates the labels. `train` in candle has no adversary: weights
trained with it would need one before they could ship.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]


def same_pad(x, k, s):
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)


class Block(nn.Module):
    def __init__(self, cin, cout, k, s, ratio):
        super().__init__()
        mid = cin * ratio
        self.k, self.s, self.ratio = k, s, ratio
        if ratio != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, s, groups=mid, bias=False)
        self._bn1 = bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = bn(cout)
        self.skip = s == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.ratio != 1 else x
        y = F.relu6(self._bn1(self._depthwise_conv(same_pad(y, self.k, self.s))))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -ctx.scale * g, None


class SourceAdversary(nn.Module):
    """One head per label: P(source | features, label)."""

    def __init__(self, features, labels, sources, hidden=256):
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, sources))
            for _ in range(labels))

    def forward(self, f, y):
        every = torch.stack([h(f) for h in self.heads], 1)  # batch x labels x sources
        return every[torch.arange(len(y)), y]


class Lite0(nn.Module):
    """EfficientNet-Lite0 with cxr-triage's tensor names (src/model/efficientnet.rs)."""

    def __init__(self, channels, labels, dropout, frozen_blocks):
        super().__init__()
        self._conv_stem = nn.Conv2d(channels, 32, 3, 2, bias=False)
        self._bn0 = bn(32)
        blocks, cin = [], 32
        for repeats, k, s, ratio, cout in STAGES:
            for r in range(repeats):
                blocks.append(Block(cin, cout, k, s if r == 0 else 1, ratio))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = bn(1280)
        self._fc = nn.Linear(1280, labels)
        self.dropout = dropout
        self.frozen_blocks = frozen_blocks

    def frozen_parameters(self):
        parts = [self._conv_stem, self._bn0] + list(self._blocks[:self.frozen_blocks])
        return {id(p) for m in parts for p in m.parameters()}

    def features(self, x):
        # The frozen part runs without a graph: no backward pass through it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.frozen_blocks == 0):
            x = F.relu6(self._bn0(self._conv_stem(same_pad(x, 3, 2))))
            for b in self._blocks[:self.frozen_blocks]:
                x = b(x)
        for b in self._blocks[self.frozen_blocks:]:
            x = b(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean((2, 3))

    def forward(self, x, with_features=False):
        f = self.features(x)
        logits = self._fc(F.dropout(f, self.dropout, self.training))
        return (logits, f) if with_features else logits


def macro_auc(probs, truth, k):
    aucs = []
    for c in range(k):
        pos, neg = probs[truth == c, c], probs[truth != c, c]
        if len(pos) == 0 or len(neg) == 0:
            continue
        allv = np.concatenate([pos, neg])
        # ranks, ties averaged
        order = np.argsort(allv, kind="stable")
        sv = allv[order]
        r = np.empty(len(allv))
        i = 0
        while i < len(sv):
            j = i
            while j + 1 < len(sv) and sv[j + 1] == sv[i]:
                j += 1
            r[order[i:j + 1]] = (i + j) / 2 + 1
            i = j + 1
        ranks = r
        aucs.append((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
    return float(np.mean(aucs)) if aucs else float("nan")


def oppoint_specificity(probs, truth, positive, sensitivity=0.95):
    """Specificity at the highest threshold on P(positive) that keeps `sensitivity` of the
    positives flagged: the figure the user sees (train's calibration picks the same threshold;
    temperature scaling does not move it)."""
    pos = np.sort(probs[truth == positive, positive])[::-1]
    neg = probs[truth != positive, positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    t = pos[max(math.ceil(sensitivity * len(pos)) - 1, 0)]
    return float((neg < t).mean())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--views", required=True, type=Path)
    p.add_argument("--init", required=True, type=Path, help="starting manifest (ImageNet weights)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--label-smoothing", type=float, default=0.05)
    p.add_argument("--freeze-blocks", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--select", choices=["auc", "oppoint"], default="auc",
                   help="best epoch by pooled val macro AUC + 0.1 x accuracy (auc), or by the pooled "
                        "val specificity at 95 %% COVID-19 sensitivity + 0.1 x macro AUC (oppoint)")
    p.add_argument("--adversary", type=float, default=0.0,
                   help="weight of a class-conditional source adversary through gradient reversal "
                        "(0: off; see the docstring)")
    p.add_argument("--keep-epochs", action="store_true",
                   help="also write each epoch's weights (OUT.eN.safetensors), to choose on val later")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    index = json.loads((args.views / "index.json").read_text())
    spec, labels, views = index["input"], index["labels"], index["views"]
    size, k = spec["size"], len(labels)
    n = len(index["train"]["label"])
    train = np.memmap(args.views / "train.u16", dtype="<u2", mode="r", shape=(n, views, size, size))
    val = np.fromfile(args.views / "val.u16", dtype="<u2").reshape(-1, size, size)
    lo, hi = spec["scale"]
    mean, std = spec["mean"][0], spec["std"][0]

    def tensor(u16):
        x = torch.from_numpy(u16.astype(np.float32) / 65535.0)
        return ((lo + x * (hi - lo) - mean) / std).unsqueeze(1)

    y_train = torch.tensor(index["train"]["label"])
    w_train = torch.tensor(index["train"]["weight"], dtype=torch.float32)
    s_train = torch.tensor(index["train"]["source"])
    y_val = np.array(index["val"]["label"])
    src_val = np.array(index["val"]["source"])

    net = Lite0(spec["channels"], k, args.dropout, args.freeze_blocks)
    base = json.loads(args.init.read_text())
    state = load_file(str(args.init.parent / base["weights"]))
    own = net.state_dict()
    copied = {name: t for name, t in state.items() if name in own and own[name].shape == t.shape}
    missing = [n_ for n_ in own if n_ not in copied and not n_.endswith("num_batches_tracked")]
    net.load_state_dict(copied, strict=False)
    print(f"init: {len(copied)} tensors from {args.init.name}; new: {missing}", flush=True)
    frozen = net.frozen_parameters()
    params = [p_ for p_ in net.parameters() if id(p_) not in frozen]
    adversary = None
    if args.adversary > 0:
        adversary = SourceAdversary(1280, k, len(index["sources"]))
        params += list(adversary.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps = math.ceil(n / args.batch)
    total = steps * args.epochs

    def lr_at(step):
        if step < steps:
            return args.lr * (step + 1) / steps
        t = min((step - steps) / max(total - steps, 1), 1.0)
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = args.out.with_suffix(".ckpt.pt")
    start, best, history = 0, (-1.0, 0), []
    if args.resume and ckpt.exists():
        c = torch.load(ckpt)
        net.load_state_dict(c["net"])
        if adversary is not None:
            adversary.load_state_dict(c["adversary"])
        opt.load_state_dict(c["opt"])
        start, best, history = c["epoch"], tuple(c["best"]), c["history"]
        print(f"resumed after epoch {start}", flush=True)

    def export(path):
        tensors = {name: t.detach().contiguous() for name, t in net.state_dict().items()
                   if not name.endswith("num_batches_tracked")}
        save_file(tensors, str(path))

    for epoch in range(start, args.epochs):
        t0 = time.time()
        net.train()
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        order = torch.randperm(n, generator=g).numpy()
        view = epoch % views
        loss_sum, seen, correct = 0.0, 0, 0
        adv_sum, adv_correct = 0.0, 0.0
        for b in range(steps):
            idx = np.sort(order[b * args.batch:(b + 1) * args.batch])
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps + b)
            x = tensor(np.asarray(train[idx, view]))
            y, w = y_train[idx], w_train[idx]
            logits, f = net(x, with_features=True)
            per = F.cross_entropy(logits, y, reduction="none", label_smoothing=0.0)
            if args.label_smoothing > 0:
                logp = F.log_softmax(logits, 1)
                off = args.label_smoothing / (k - 1)
                target = torch.full_like(logp, off)
                target.scatter_(1, y[:, None], 1 - args.label_smoothing)
                per = -(target * logp).sum(1)
            loss = (per * w).sum() / w.sum()
            if adversary is not None:
                progress = (epoch * steps + b) / total
                scale = args.adversary * (2 / (1 + math.exp(-10 * progress)) - 1)
                s_idx = s_train[idx]
                adv_logits = adversary(GradReverse.apply(f, scale), y)
                adv_per = F.cross_entropy(adv_logits, s_idx, reduction="none")
                adv_loss = (adv_per * w).sum() / w.sum()
                loss = loss + adv_loss
                adv_sum += adv_loss.item() * len(idx)
                adv_correct += (adv_logits.argmax(1) == s_idx).sum().item()
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += (loss.item() - (adv_loss.item() if adversary is not None else 0.0)) * len(idx)
            seen += len(idx)
            correct += (logits.argmax(1) == y).sum().item()
            if b % 20 == 0:
                adv = f" adversary loss {adv_sum / seen:.4f} acc {adv_correct / seen:.3f}" if adversary is not None else ""
                print(f"  epoch {epoch + 1} batch {b + 1}/{steps} loss {loss_sum / seen:.4f}{adv} "
                      f"{seen / (time.time() - t0):.1f} img/s", flush=True)
        net.eval()
        with torch.no_grad():
            probs = torch.cat([F.softmax(net(tensor(val[i:i + 64])), 1) for i in range(0, len(val), 64)]).numpy()
        acc = float((probs.argmax(1) == y_val).mean())
        auc = macro_auc(probs, y_val, k)
        per_source = []
        for s, name in enumerate(index["sources"]):
            m = src_val == s
            if m.any():
                per_source.append(f"{name} acc {(probs[m].argmax(1) == y_val[m]).mean():.3f} "
                                  f"AUC {macro_auc(probs[m], y_val[m], k):.4f}")
        covid = labels.index("covid") if "covid" in labels else 0
        spec95 = oppoint_specificity(probs, y_val, covid)
        score = spec95 + 0.1 * auc if args.select == "oppoint" else auc + 0.1 * acc
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                        "val_accuracy": acc, "val_macro_auc": auc,
                        "val_specificity_at_95_sensitivity": spec95, "seconds": time.time() - t0})
        if adversary is not None:
            history[-1].update(adversary_loss=adv_sum / seen, adversary_accuracy=adv_correct / seen)
        print(f"epoch {epoch + 1}/{args.epochs} train loss {loss_sum / seen:.4f} acc {correct / seen:.3f} "
              f"{f'adversary loss {adv_sum / seen:.4f} acc {adv_correct / seen:.3f} ' if adversary is not None else ''}"
              f"val acc {acc:.3f} macro AUC {auc:.4f} spec@95 {spec95:.3f} ({time.time() - t0:.0f} s); {'; '.join(per_source)}",
              flush=True)
        if score > best[0]:
            best = (score, epoch + 1)
            export(args.out.with_suffix(".safetensors"))
        if args.keep_epochs:
            export(args.out.with_name(f"{args.out.name}.e{epoch + 1}.safetensors"))
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1,
                    "adversary": adversary.state_dict() if adversary is not None else None,
                    "best": list(best), "history": history}, ckpt)

    weights = args.out.with_suffix(".safetensors")
    import hashlib
    manifest = {
        "name": args.out.name,
        "architecture": "efficientnet_lite0",
        "labels": labels,
        "output": "softmax",
        "input": spec,
        "temperature": 1.0,
        "weights": weights.name,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "trained_on": f"{'+'.join(index['sources'])} train splits (tools/train_twin.py, best epoch "
                      f"{best[1]} of {args.epochs}, from {base['name']}"
                      f"{f', source adversary {args.adversary}' if args.adversary > 0 else ''})",
    }
    args.out.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    (args.out.parent / (args.out.name + ".history.json")).write_text(json.dumps(history, indent=2))
    print(f"RESULT best epoch {best[1]} score {best[0]:.4f}; wrote {args.out.with_suffix('.json')}", flush=True)


if __name__ == "__main__":
    main()
