"""Small seed inputs for the fuzzers (run from the repository root: python3 fuzz/make_seeds.py).

Needs Pillow, numpy and pydicom (PyPI). Every seed is made here from synthetic pixels.
"""
import io, json, pathlib
import numpy as np
from PIL import Image
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                         RLELossless, generate_uid)

out = pathlib.Path("fuzz/seeds/decode")
out.mkdir(parents=True, exist_ok=True)
ramp8 = (np.add.outer(np.arange(16) * 10, np.arange(20) * 8) % 256).astype(np.uint8)
ramp16 = ramp8.astype(np.uint16) * 16

def save(name, img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    (out / name).write_bytes(buf.getvalue())

save("gray8.png", Image.fromarray(ramp8), "PNG")
save("gray16.png", Image.fromarray(ramp16.astype(np.int32)).convert("I;16"), "PNG")
save("rgb.png", Image.fromarray(ramp8).convert("RGB"), "PNG")
save("palette.png", Image.fromarray(ramp8).convert("P"), "PNG")
save("gray.jpg", Image.fromarray(ramp8), "JPEG", quality=80)
save("gray.bmp", Image.fromarray(ramp8), "BMP")
save("gray.tif", Image.fromarray(ramp8), "TIFF")

def dicom(name, pixels, syntax, photometric="MONOCHROME2", extra=None, preamble=True):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, min(bits, 12) if bits == 16 else 8, (min(bits, 12) if bits == 16 else 8) - 1, 0
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    if syntax == RLELossless:
        ds.PixelData = pixels.tobytes()
        ds.compress(RLELossless, pixels)
    else:
        ds.PixelData = pixels.byteswap().tobytes() if syntax == ExplicitVRBigEndian and bits == 16 else pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=preamble, implicit_vr=syntax == ImplicitVRLittleEndian,
               little_endian=syntax != ExplicitVRBigEndian)
    data = buf.getvalue()
    if not preamble:
        data = data[data.find(b"\x08\x00"):]  # bare data set, no preamble or meta
    (out / name).write_bytes(data)

dicom("mono2-8bit.dcm", ramp8, ExplicitVRLittleEndian)
dicom("mono1-12bit-window.dcm", ramp16, ExplicitVRLittleEndian, "MONOCHROME1",
      {"WindowCenter": "1000", "WindowWidth": "2000", "RescaleSlope": "1", "RescaleIntercept": "-100"})
dicom("implicit.dcm", ramp16, ImplicitVRLittleEndian)
dicom("rle.dcm", ramp16, RLELossless)
dicom("bare-implicit", ramp8, ImplicitVRLittleEndian, preamble=False)

# JPEG 2000 in DICOM, from the test fixture (48 x 40, 16-bit codestream).
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless
j2k = pathlib.Path("tests/fixtures/ramp-12bit-lossless.j2k").read_bytes()
meta = FileMetaDataset()
meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
meta.MediaStorageSOPInstanceUID = generate_uid()
meta.TransferSyntaxUID = JPEG2000Lossless
ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "DX", 40, 48, 1
ds.PhotometricInterpretation = "MONOCHROME2"
ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
ds.PixelData = encapsulate([j2k + b"\0" * (len(j2k) % 2)])
ds["PixelData"].VR = "OB"
buf = io.BytesIO()
ds.save_as(buf, enforce_file_format=True)
(out / "j2k.dcm").write_bytes(buf.getvalue())

mout = pathlib.Path("fuzz/seeds/manifest")
mout.mkdir(parents=True, exist_ok=True)
manifest = json.loads(pathlib.Path("models/cxrnet-v1.json").read_text())
manifest.pop("metrics", None)
(mout / "default.json").write_text(json.dumps(manifest))
manifest.update(output="sigmoid", labels=["a", "b"], operating_points={"a": 0.5})
(mout / "sigmoid.json").write_text(json.dumps(manifest))
