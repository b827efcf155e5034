//! Any bytes through the one decode path (PNG, JPEG, BMP, TIFF, DICOM by their magic bytes),
//! then the thumbnail and the model's preprocessing, as the app does with a file.
#![no_main]

use cxr_triage::imaging::{Limits, decode_bytes, thumbnail};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small limits: the fuzzer checks that limits hold, not that 100-megapixel images fit in
    // its memory budget.
    let limits = Limits {
        max_bytes: 1 << 20,
        max_pixels: 4 << 20,
    };
    if let Ok(decoded) = decode_bytes(data, &limits) {
        let img = &decoded.image;
        assert_eq!(img.pixels.len(), img.width as usize * img.height as usize);
        let t = thumbnail(img, 64);
        assert!(t.width <= 64 && t.height <= 64);
        let _ = decoded.describe();
        let spec = cxr_triage::model::Manifest::from_json(cxr_triage::model::DEFAULT_MANIFEST)
            .expect("default manifest")
            .input;
        if let Ok(plane) = cxr_triage::model::preprocess(img, &spec) {
            assert!(plane.iter().all(|v| v.is_finite()));
        }
    }
});
