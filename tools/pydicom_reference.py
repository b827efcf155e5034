#!/usr/bin/env python3
"""What pydicom (with the pylibjpeg handlers) makes of a folder of DICOM files, as cxr-triage's
8-bit gray output would be: the reference for `tests/it/pydicom.rs`.

    pip install pydicom pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle
    python3 tools/pydicom_reference.py --out /tmp/ref [--data DIR]

Without --data it reads pydicom's own test files (`pydicom/data/test_files`). Writes
`index.json` (one entry per file: relative path, decoded or the error, width, height, lossy)
and `N.u8` (the first frame, width x height bytes) for each decoded file.

The same steps as `src/imaging/dicom.rs`, in the standard's order: monochrome images get the
modality LUT (rescale), then the first window (PS3.3 C.11.2.1.2.1, linear), else the first VOI
LUT table, else a min-max window leaving out the Pixel Padding Value; MONOCHROME1 is inverted.
Colour images become luminance (0.299 R + 0.587 G + 0.114 B) over the full range of Bits
Stored; palette colour through its tables. Then 0..1 -> 0..255, rounded.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, apply_modality_lut

LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
         "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"}


def first(v):
    if v is None:
        return None
    try:
        return float(v[0]) if isinstance(v, (list, pydicom.multival.MultiValue)) else float(v)
    except (TypeError, ValueError, IndexError):
        return None


def unit_image(ds):
    arr = ds.pixel_array
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[0]
    pi = str(ds.PhotometricInterpretation).strip()
    luma = np.array([0.299, 0.587, 0.114])
    if spp == 3:
        top = float(2 ** int(ds.BitsStored) - 1)
        return (arr.astype(np.float64) @ luma) / top
    if pi == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds).astype(np.float64)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        table = np.frombuffer(ds.RedPaletteColorLookupTableData, dtype="<u2" if bits > 8 else "u1")
        top = 255.0 if bits == 16 and table.max() <= 255 else float(2 ** bits - 1)
        return np.clip((rgb @ luma) / top, 0, 1)
    v = apply_modality_lut(arr, ds).astype(np.float64)
    c, w = first(ds.get("WindowCenter")), first(ds.get("WindowWidth"))
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    pad = ds.get("PixelPaddingValue")
    padding = np.zeros(v.shape, bool) if pad is None else np.abs(v - (float(pad) * slope + intercept)) < 1e-6
    if c is not None and w is not None and w >= 1:
        lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
        unit = np.clip((v - lo) / (hi - lo), 0, 1)
    elif "VOILUTSequence" in ds and len(ds.VOILUTSequence) and "LUTData" in ds.VOILUTSequence[0]:
        item = ds.VOILUTSequence[0]
        entries, start, bits = [int(x) for x in item.LUTDescriptor]
        data = np.asarray(item.LUTData, dtype=np.float64).ravel()
        idx = np.clip(np.round(v) - start, 0, len(data) - 1).astype(int)
        unit = np.clip(data[idx] / float(2 ** bits - 1), 0, 1)
    else:
        kept = v[~padding & np.isfinite(v)]
        lo, hi = (kept.min(), kept.max()) if kept.size else (0.0, 0.0)
        unit = np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros(v.shape)
    if pi == "MONOCHROME1":
        unit = 1 - unit
    unit[padding | ~np.isfinite(v)] = 0
    return unit


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    index = []
    for path in sorted(q for q in args.data.rglob("*") if q.is_file()):
        rel = str(path.relative_to(args.data))
        entry = {"path": rel, "file": str(path)}
        try:
            ds = pydicom.dcmread(path, force=True)
            unit = unit_image(ds)
            if unit.ndim != 2:
                raise ValueError(f"unexpected shape {unit.shape}")
            out = np.round(unit * 255).astype(np.uint8)
            name = f"{len(index)}.u8"
            (args.out / name).write_bytes(out.tobytes())
            ts = str(getattr(ds.file_meta, "TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
            entry.update(ok=True, image=name, height=int(out.shape[0]), width=int(out.shape[1]),
                         lossy=ts in LOSSY or str(ds.get("LossyImageCompression", "00")) == "01")
        except Exception as e:  # noqa: BLE001 - pydicom refusing a file is the answer here
            entry.update(ok=False, error=f"{type(e).__name__}: {e}"[:200])
        index.append(entry)
    (args.out / "index.json").write_text(json.dumps(index, indent=1))
    print(f"{sum(e['ok'] for e in index)} of {len(index)} files decoded by pydicom "
          f"{pydicom.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
