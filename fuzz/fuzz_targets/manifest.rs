//! Any text as a model manifest: parsed and validated, or refused with an error; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(manifest) = cxr_triage::model::Manifest::from_json(text) {
            // A manifest that parsed must survive a round trip.
            let again = cxr_triage::model::Manifest::from_json(&manifest.to_json_pretty())
                .expect("a valid manifest re-parses");
            assert_eq!(again, manifest);
        }
    }
});
