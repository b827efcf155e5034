//! Hostile input: a generated folder of several hundred broken, tricky and special files,
//! scanned by the real binary. Every file gets exactly one row, nothing panics or hangs, memory
//! stays bounded, and the folder is left exactly as it was.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{pattern8, png_bytes};

/// Peak RSS limit for the scan of the corpus (generous: a scan of small files needs ~150 MiB).
const MAX_RSS_MIB: i64 = 1024;

fn jpeg_bytes(img: &image::GrayImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn encode(img: &image::GrayImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// Offsets where a PNG's chunks start and end.
fn png_boundaries(png: &[u8]) -> Vec<usize> {
    let mut at = 8;
    let mut out = vec![8];
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        out.extend([at + 4, at + 8, at + 8 + len]);
        at += 12 + len;
        out.push(at);
    }
    out
}

/// Offsets of a JPEG's markers.
fn jpeg_markers(jpeg: &[u8]) -> Vec<usize> {
    (0..jpeg.len() - 1)
        .filter(|&i| jpeg[i] == 0xFF && !matches!(jpeg[i + 1], 0x00 | 0xFF | 0xD0..=0xD7))
        .collect()
}

/// A PNG with any declared size (valid CRC), no pixel data.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    let crc = crc32(&ihdr);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(13u32.to_be_bytes());
    out.extend(ihdr);
    out.extend(crc.to_be_bytes());
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

struct Rng(u64);
impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                (self.0 >> 56) as u8
            })
            .collect()
    }
}

/// Write the corpus; returns the number of rows a scan with `-L` must produce.
fn make_corpus(root: &Path) -> usize {
    let mut files = 0;
    let mut put = |rel: &str, bytes: &[u8]| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        files += 1;
    };
    let img = pattern8(64, 48);
    let png = png_bytes(&img);
    let jpeg = jpeg_bytes(&img);
    let dicom = cxr_triage::bench::dicom_bytes(&cxr_triage::bench::synthetic_xray(32, 3), false);
    let rle = cxr_triage::bench::dicom_bytes(&cxr_triage::bench::synthetic_xray(32, 4), true);

    // Truncations at every structural boundary (and one byte either side).
    let mut cuts = |name: &str, bytes: &[u8], points: Vec<usize>| {
        let mut points: Vec<usize> = points
            .into_iter()
            .flat_map(|p| [p.saturating_sub(1), p, p + 1])
            .filter(|&p| p > 0 && p < bytes.len())
            .collect();
        points.sort_unstable();
        points.dedup();
        for p in points {
            put(
                &format!("truncated/{name}-{p:05}.{}", &name[..3]),
                &bytes[..p],
            );
        }
    };
    cuts("png", &png, png_boundaries(&png));
    cuts("jpg", &jpeg, jpeg_markers(&jpeg));
    // DICOM elements are at least 8 bytes: every even offset of the header hits each boundary.
    let header_end = dicom.len() - 32 * 32 * 2;
    cuts(
        "dcm",
        &dicom,
        (0..header_end)
            .step_by(2)
            .chain([header_end + 100, dicom.len() - 2])
            .collect(),
    );
    cuts(
        "dcm-rle",
        &rle,
        (rle.len() - 300..rle.len()).step_by(37).collect(),
    );

    // Random bytes behind valid magic.
    let mut rng = Rng(7);
    let magics: [(&str, Vec<u8>); 5] = [
        ("png", b"\x89PNG\r\n\x1a\n".to_vec()),
        ("jpg", vec![0xFF, 0xD8, 0xFF]),
        ("tif", b"II*\0".to_vec()),
        ("bmp", b"BM".to_vec()),
        ("dcm", [vec![0u8; 128], b"DICM".to_vec()].concat()),
    ];
    for (ext, magic) in &magics {
        for i in 0..6 {
            put(
                &format!("random/{ext}-{i}.{ext}"),
                &[magic.clone(), rng.bytes(64 << i)].concat(),
            );
        }
    }
    // Huge, zero and tiny declared sizes; empty files; formats that lie about themselves.
    put("sizes/huge-50000.png", &png_header(50_000, 50_000));
    put("sizes/huge-wide.png", &png_header(1 << 30, 1));
    put("sizes/zero.png", &png_header(0, 0));
    put("sizes/one.png", &png_bytes(&pattern8(1, 1)));
    let mut huge_jpeg = jpeg.clone();
    let sof = jpeg_markers(&jpeg)
        .into_iter()
        .find(|&i| jpeg[i + 1] == 0xC0)
        .unwrap();
    huge_jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xF0, 0xFF, 0xF0]);
    put("sizes/huge.jpg", &huge_jpeg);
    let mut huge_bmp = encode(&img, image::ImageFormat::Bmp);
    huge_bmp[18..26].copy_from_slice(&[0xA0, 0x86, 0x01, 0x00, 0xA0, 0x86, 0x01, 0x00]);
    put("sizes/huge.bmp", &huge_bmp);
    let stored = vec![0u16; 16];
    let mut big_dicom = cxr_triage::imaging::write_dicom(&stored, 4, 4, &Default::default());
    // Rows and Columns (US, after their tags) set to 65535 with 32 bytes of pixel data.
    for tag in [[0x28, 0x00, 0x10, 0x00], [0x28, 0x00, 0x11, 0x00]] {
        let at = big_dicom.windows(4).position(|w| w == tag).unwrap();
        big_dicom[at + 8..at + 10].copy_from_slice(&[0xFF, 0xFF]);
    }
    put("sizes/rows-65535.dcm", &big_dicom);
    for ext in ["png", "jpg", "dcm", "tif", "bmp"] {
        put(&format!("empty/empty.{ext}"), b"");
    }
    put("lies/text.png", b"This is not an image at all.\n");
    put("lies/png-named.dcm", &png);
    put("lies/jpeg-named.png", &jpeg);
    // Good images with hostile names and places.
    put("names/with space.png", &png);
    put("names/new\nline.png", &png);
    put("names/ünïcödé.png", &png);
    let deep: String = (0..60).map(|i| format!("d{i}/")).collect();
    put(&format!("{deep}deep.png"), &png);
    let bad_name = root
        .join("names")
        .join(std::ffi::OsStr::from_bytes(b"bad-\xff\xfe.png"));
    std::fs::write(bad_name, &png).unwrap();
    files += 1;
    // A symlink loop (a row with -L), a FIFO and an unreadable file.
    std::os::unix::fs::symlink("..", root.join("names/loop")).unwrap();
    files += 1;
    let fifo = root.join("special/fifo.png");
    std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    files += 1;
    let locked = root.join("special/locked.png");
    std::fs::write(&locked, &png).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    files += 1;
    files
}

/// Every file under `root` (links not followed): relative path -> (size, mtime, content hash).
pub fn snapshot_tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        let meta = e.path().symlink_metadata().unwrap();
        let mtime = meta.modified().ok();
        let content = if meta.is_file() {
            std::fs::read(e.path())
                .map(|b| cxr_triage::model::sha256_hex(&b))
                .unwrap_or_else(|err| format!("unreadable: {}", err.kind()))
        } else {
            format!("{:?}", meta.file_type())
        };
        out.insert(rel, format!("{} {mtime:?} {content}", meta.len()));
    }
    out
}

/// Run the binary and return (exit code, stdout, stderr, peak RSS in KiB) via wait4.
fn run_measured(args: &[&std::ffi::OsStr], timeout: Duration) -> (i32, Vec<u8>, String, i64) {
    use std::io::Read;
    let mut child = crate::common::cxr_std()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).unwrap();
        v
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(timeout);
        // Still running after the bound: kill it so the test fails instead of hanging.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    drop(watchdog); // detached; the pid is reaped, a late kill hits nothing of ours
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    };
    (
        code,
        out.join().unwrap(),
        err.join().unwrap(),
        usage.ru_maxrss,
    )
}

/// `scan --format jsonl` over `dir`, which holds broken files: exit 1, no panic on stderr.
/// Returns the rows and the peak RSS in KiB.
fn scan_failing(dir: &Path, extra: &[&str], timeout: Duration) -> (Vec<serde_json::Value>, i64) {
    let mut args: Vec<&std::ffi::OsStr> = vec!["scan".as_ref(), dir.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    args.extend(["--format", "jsonl", "--quiet"].map(std::ffi::OsStr::new));
    let (code, stdout, stderr, rss_kib) = run_measured(&args, timeout);
    assert_eq!(code, 1, "exit code (some files fail): {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let rows = stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    (rows, rss_kib)
}

#[test]
fn every_hostile_file_gets_one_row_and_nothing_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("corpus");
    let expected = make_corpus(&root);
    assert!(expected >= 200, "only {expected} files");
    let before = snapshot_tree(&root);

    let (rows, rss_kib) = scan_failing(&root, &["-L"], Duration::from_secs(300));
    let mut paths: Vec<String> = rows
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    let unique = {
        let mut p = paths.clone();
        p.dedup();
        p.len()
    };
    assert_eq!(unique, paths.len(), "a file got two rows");
    assert_eq!(rows.len(), expected, "rows: {paths:#?}");
    let status = |p: &str| -> String {
        rows.iter()
            .find(|r| r["path"].as_str() == Some(p))
            .map(|r| format!("{} {}", r["status"], r["error"]))
            .unwrap_or_else(|| panic!("no row for {p}"))
    };
    assert!(
        status("special/fifo.png").contains("not a regular file"),
        "{}",
        status("special/fifo.png")
    );
    assert!(
        status("sizes/huge-50000.png").contains("megapixel")
            || status("sizes/huge-50000.png").contains("limit"),
        "{}",
        status("sizes/huge-50000.png")
    );
    assert!(status("names/with space.png").starts_with("\"done\""));
    assert!(status("names/new\nline.png").starts_with("\"done\""));
    assert!(
        rows.iter()
            .any(|r| r["error"].as_str().is_some_and(|e| e.contains("loop")))
    );
    for r in &rows {
        if r["status"] == "error" {
            let e = r["error"].as_str().unwrap();
            assert!(
                !e.is_empty() && !e.contains('\n'),
                "error rows are one line: {e:?}"
            );
        }
    }
    assert!(
        rss_kib < MAX_RSS_MIB * 1024,
        "peak RSS {} MiB over {MAX_RSS_MIB} MiB",
        rss_kib / 1024
    );
    println!("{} files, peak RSS {} MiB", rows.len(), rss_kib / 1024);
    assert_eq!(
        snapshot_tree(&root),
        before,
        "the scan changed the image folder"
    );
}

/// Inputs the fuzzers found (`tests/fixtures/fuzz/`, see `fuzz/`): each is an error row, read
/// in bounded memory and time.
#[test]
fn fuzzer_findings_stay_fixed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let count = std::fs::read_dir(&dir).unwrap().count();
    assert!(count > 0);
    let (rows, rss_kib) = scan_failing(&dir, &[], Duration::from_secs(60));
    assert_eq!(rows.len(), count);
    assert!(rows.iter().all(|r| r["status"] == "error"), "{rows:#?}");
    // The DICOM one made the parser allocate 3.4 GB before the length check existed.
    assert!(rss_kib < 256 * 1024, "peak RSS {} MiB", rss_kib / 1024);
}
