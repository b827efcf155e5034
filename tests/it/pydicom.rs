//! pydicom's own test files, decoded by us and by pydicom + pylibjpeg
//! (`tools/pydicom_reference.py`): every file pydicom decodes, we decode too, to the same 8-bit
//! picture. Skips, saying why, where Python has no pydicom (`.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Files pydicom decodes and we do not yet (or not to the same picture), with the reason. The
/// test fails when one of them starts to match (take it off the list) and when any other file
/// fails or differs.
const KNOWN_GAPS: &[(&str, &str)] = &[];

fn python() -> String {
    std::env::var("CXR_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn has_pydicom() -> Result<(), String> {
    let out = Command::new(python())
        .args(["-c", "import pydicom, pylibjpeg, numpy"])
        .output()
        .map_err(|e| format!("{}: {e}", python()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("")
            .to_string())
    }
}

#[derive(serde::Deserialize)]
struct Entry {
    path: String,
    file: PathBuf,
    ok: bool,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
    #[serde(default)]
    lossy: bool,
}

fn correlation(a: &[u8], b: &[u8]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (
        a.iter().map(|&v| v as f64).sum::<f64>() / n,
        b.iter().map(|&v| v as f64).sum::<f64>() / n,
    );
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    if saa == 0.0 && sbb == 0.0 {
        1.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

#[test]
fn every_file_pydicom_decodes_we_decode_to_the_same_picture() {
    if let Err(why) = has_pydicom() {
        eprintln!(
            "skipped: no pydicom + pylibjpeg for {} ({why}); `pip install pydicom pylibjpeg \
             pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle` to run it",
            python()
        );
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/pydicom_reference.py");
    let run = Command::new(python())
        .arg(&tool)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    let index: Vec<Entry> =
        serde_json::from_slice(&std::fs::read(out.path().join("index.json")).unwrap()).unwrap();
    let decoded: Vec<&Entry> = index.iter().filter(|e| e.ok).collect();
    assert!(
        decoded.len() >= 80,
        "pydicom decoded only {}",
        decoded.len()
    );
    let mut problems = Vec::new();
    let mut matched = 0;
    for e in &decoded {
        let verdict = compare(e, out.path());
        match (verdict, KNOWN_GAPS.iter().find(|(name, _)| *name == e.path)) {
            (Ok(()), None) => matched += 1,
            (Err(problem), None) => problems.push(problem),
            (Ok(()), Some((name, why))) => {
                problems.push(format!(
                    "{name} decodes now ({why}): take it off KNOWN_GAPS"
                ));
            }
            (Err(_), Some(_)) => {}
        }
    }
    eprintln!(
        "{matched} of {} files pydicom decodes match; {} known gaps",
        decoded.len(),
        KNOWN_GAPS.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Our picture of one file against pydicom's.
fn compare(e: &Entry, refs: &Path) -> Result<(), String> {
    let ours = cxr_triage::imaging::load(&e.file)
        .map_err(|err| format!("{}: pydicom decodes it, we say: {err}", e.path))?;
    let (w, h) = (ours.image.width, ours.image.height);
    if (w, h) != (e.width, e.height) {
        return Err(format!(
            "{}: {w}x{h}, pydicom {}x{}",
            e.path, e.width, e.height
        ));
    }
    let theirs = std::fs::read(refs.join(e.image.as_ref().unwrap())).unwrap();
    let scale = if ours.image.bit_depth > 8 { 257.0 } else { 1.0 };
    let mine: Vec<u8> = ours
        .image
        .pixels
        .iter()
        .map(|&v| (v as f64 / scale).round() as u8)
        .collect();
    let worst = mine
        .iter()
        .zip(&theirs)
        .map(|(&a, &b)| a.abs_diff(b))
        .max()
        .unwrap_or(0);
    // Lossy codecs differ between decoders; YBR converted to RGB and back rounds twice.
    let loose = e.lossy
        || ours
            .dicom
            .as_ref()
            .is_some_and(|d| d.photometric.starts_with("YBR"));
    let r = correlation(&mine, &theirs);
    if worst > 1 && !(loose && r >= 0.999) {
        return Err(format!(
            "{}: max difference {worst} grey levels, correlation {r:.5}",
            e.path
        ));
    }
    Ok(())
}
