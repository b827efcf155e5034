//! Sharded scans (`scan --shard K/N`), `merge`, and `cache import`: N parts merged are one scan.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{cxr, cxr_std, pattern8, png_bytes, tiny_model, write_png8};

/// A folder of `n` good images in nested class folders, plus broken files.
pub fn folder(root: &Path, n: usize) {
    for i in 0..n {
        let dir = root.join(["covid", "normal", "normal/deeper", "pneumonia"][i % 4]);
        std::fs::create_dir_all(&dir).unwrap();
        write_png8(&dir.join(format!("img{i}.png")), 24 + (i as u32 % 9), 30);
    }
    let png = png_bytes(&pattern8(40, 40));
    std::fs::write(root.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(root.join("normal/text.png"), "not an image").unwrap();
    std::fs::write(root.join("empty.dcm"), b"").unwrap();
}

struct Setup {
    _dirs: Vec<tempfile::TempDir>,
    model: PathBuf,
    data: PathBuf,
    out: PathBuf,
}

fn setup(n: usize) -> Setup {
    let (models, data, out) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    folder(data.path(), n);
    Setup {
        model: tiny_model(models.path()),
        data: data.path().to_path_buf(),
        out: out.path().to_path_buf(),
        _dirs: vec![models, data, out],
    }
}

/// `scan` of the folder with `extra` arguments; returns stderr.
fn scan(s: &Setup, extra: &[&str]) -> String {
    let out = cxr()
        .arg("scan")
        .arg(&s.data)
        .arg("--model")
        .arg(&s.model)
        .args(extra)
        .output()
        .unwrap();
    // 1 when the files scanned include broken ones, as they may in a shard.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// `merge` without --model: it loads the model the parts name.
fn merge(_s: &Setup, args: &[&Path]) -> std::process::Output {
    cxr().arg("merge").args(args).output().unwrap()
}

fn shard_parts(s: &Setup, names: &[&str], extra: &[&str]) -> Vec<PathBuf> {
    let n = names.len();
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let part = s.out.join(name);
            let shard = format!("{}/{n}", i + 1);
            let mut args = vec![
                "--no-cache",
                "--shard",
                &shard,
                "--out",
                part.to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            scan(s, &args);
            part
        })
        .collect()
}

#[test]
fn four_shards_in_mixed_formats_merge_into_exactly_the_single_scan() {
    let s = setup(40);
    let whole = s.out.join("whole.csv");
    let whole_err = scan(&s, &["--no-cache", "--out", whole.to_str().unwrap()]);
    let parts = shard_parts(&s, &["p1.csv", "p2.json", "p3.jsonl", "p4.csv"], &[]);
    // Every image in exactly one part, and no part empty at this size.
    let mut total = 0;
    for p in &parts {
        let record: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{}.shard.json", p.display())).unwrap(),
        )
        .unwrap();
        let images = record["images"].as_u64().unwrap();
        assert!(images > 0, "{p:?}");
        total += images;
    }
    assert_eq!(total, 43);
    let merged = s.out.join("merged.csv");
    let mut args: Vec<&Path> = vec![Path::new("--out"), &merged];
    // Given in another order than the shards': the output does not depend on it.
    args.extend(parts.iter().rev().map(PathBuf::as_path));
    let out = merge(&s, &args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "errors among the rows: exit 1 as scan"
    );
    assert_eq!(
        std::fs::read_to_string(&merged).unwrap(),
        std::fs::read_to_string(&whole).unwrap()
    );
    // The same summary counts as the single scan.
    let err = String::from_utf8(out.stderr).unwrap();
    let counts = |text: &str| {
        let line = text
            .lines()
            .find(|l| l.contains(" images "))
            .unwrap()
            .to_string();
        line.split_once(": ").unwrap().1.to_string()
    };
    assert_eq!(counts(&err), counts(&whole_err), "{err}");
    assert!(err.contains("43 images from 4 shards"), "{err}");
    // Class folders are true labels: merge prints eval's figures, as scan does.
    assert!(err.contains("confusion"), "{err}");
    // Never over an existing output.
    let again = merge(&s, &args);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
}

#[test]
fn merge_names_the_missing_doubled_unfinished_or_foreign_part() {
    let s = setup(16);
    let parts = shard_parts(&s, &["a.csv", "b.csv", "c.csv"], &[]);
    let refused = |args: &[&Path], what: &str| {
        let out = merge(&s, args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(what), "expected {what:?} in: {err}");
    };
    refused(&[&parts[0], &parts[2]], "missing shard 2/3");
    refused(
        &[&parts[0], &parts[1], &parts[1], &parts[2]],
        "shard 2/3 given 2 times",
    );
    // Another scan's part: other options, or another number of shards.
    for (name, args, what) in [
        (
            "forced.csv",
            ["--force", "--shard", "2/3"].as_slice(),
            "options",
        ),
        ("other.csv", ["--shard", "2/4"].as_slice(), "shard counts"),
    ] {
        let part = s.out.join(name);
        let mut all = vec!["--no-cache", "--out", part.to_str().unwrap()];
        all.extend_from_slice(args);
        scan(&s, &all);
        refused(&[&parts[0], &part, &parts[2]], what);
    }
    // A plain results file is no part.
    let plain = s.out.join("plain.csv");
    scan(&s, &["--no-cache", "--out", plain.to_str().unwrap()]);
    refused(&[&plain], "not the output of a finished `scan --shard`");
    // Parts edited after their shard finished: a row of another shard, a row gone, rows
    // reordered. The merge stops and leaves no output behind.
    let text = std::fs::read_to_string(&parts[0]).unwrap();
    let foreign = std::fs::read_to_string(&parts[1]).unwrap();
    let merged = s.out.join("merged.csv");
    let edited = s.out.join("edited.csv");
    std::fs::copy(
        format!("{}.shard.json", parts[0].display()),
        format!("{}.shard.json", edited.display()),
    )
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 4, "shard 1 of 3 has a few rows: {text}");
    for (content, what) in [
        (
            format!("{text}{}\n", foreign.lines().nth(1).unwrap()),
            "belongs to shard",
        ),
        (
            format!("{}\n", lines[..lines.len() - 1].join("\n")),
            "rows, but its shard record says",
        ),
        (
            format!(
                "{}\n{}\n{}\n{}\n",
                lines[0],
                lines[2],
                lines[1],
                lines[3..].join("\n")
            ),
            "not in the order scan writes",
        ),
    ] {
        std::fs::write(&edited, content).unwrap();
        let args: Vec<&Path> = vec![Path::new("--out"), &merged, &edited, &parts[1], &parts[2]];
        refused(&args, what);
        assert!(!merged.exists(), "{what}: a failed merge left its output");
    }
    // Another model than the parts'.
    let models = tempfile::tempdir().unwrap();
    let other_model = tiny_model(models.path());
    let out = cxr()
        .arg("merge")
        .arg("--model")
        .arg(&other_model)
        .args(&parts[1..])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // Two random-weight tiny models differ in their weights' hash, so in identity.
    assert!(err.contains("pass the scan's --model"), "{err}");
}

#[test]
fn shard_numbers_are_checked_before_anything_runs() {
    let s = setup(2);
    let part = s.out.join("p.csv");
    for (bad, says) in [
        ("0/4", "count from 1"),
        ("5/4", "1 <= K <= N"),
        ("4", "K/N"),
    ] {
        let out = cxr()
            .arg("scan")
            .arg(&s.data)
            .args(["--shard", bad, "--out"])
            .arg(&part)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{bad}");
    }
    // A shard's record needs a file to sit beside.
    let out = cxr()
        .arg("scan")
        .arg(&s.data)
        .args(["--shard", "1/2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out"));
    assert!(!part.exists());
}

/// A shard killed half way leaves no record (merge refuses it); run again with the same store,
/// it takes what was stored and scores only the rest.
#[test]
fn a_killed_shard_is_refused_until_rerun_and_the_rerun_keeps_what_was_stored() {
    let s = setup(40);
    let store = s.out.join("store-2.sqlite3");
    let part = s.out.join("p2.csv");
    let parts = shard_parts(&s, &["p1.csv", "unused.csv"], &[]);
    // An earlier, finished run of shard 2 left its record: the new run removes it first.
    std::fs::copy(
        format!("{}.shard.json", parts[1].display()),
        format!("{}.shard.json", part.display()),
    )
    .unwrap();
    let mut child = cxr_std()
        .arg("scan")
        .arg(&s.data)
        .arg("--model")
        .arg(&s.model)
        .arg("--cache")
        .arg(&store)
        .args([
            "--shard", "2/2", "--quiet", "--jobs", "1", "--batch", "1", "--out",
        ])
        .arg(&part)
        .env("CXR_TRIAGE_TEST_SLOW_MS", "60")
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut seen: i64 = 0;
    while started.elapsed() < Duration::from_secs(60) && seen < 2 {
        std::thread::sleep(Duration::from_millis(20));
        seen = rusqlite::Connection::open(&store)
            .and_then(|c| c.query_row("SELECT count(*) FROM results", [], |r| r.get(0)))
            .unwrap_or(0);
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "finished before the kill"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let out = merge(&s, &[&parts[0], &part]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run it again"));
    // The rerun.
    let err = cxr()
        .arg("scan")
        .arg(&s.data)
        .arg("--model")
        .arg(&s.model)
        .arg("--cache")
        .arg(&store)
        .args(["--shard", "2/2", "--out"])
        .arg(&part)
        .output()
        .unwrap()
        .stderr;
    let err = String::from_utf8(err).unwrap();
    let stored = stored_count(&err);
    assert!(stored >= seen, "{err}");
    let merged = s.out.join("merged.jsonl");
    let out = merge(&s, &[Path::new("--out"), &merged, &parts[0], &part]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&merged).unwrap().lines().count(),
        43
    );
}

#[test]
fn cache_import_joins_the_shards_stores_so_a_rescan_scores_nothing() {
    let s = setup(12);
    let stores: Vec<PathBuf> = (1..=2)
        .map(|k| s.out.join(format!("store-{k}.sqlite3")))
        .collect();
    for (k, store) in stores.iter().enumerate() {
        let part = s.out.join(format!("p{}.csv", k + 1));
        let shard = format!("{}/2", k + 1);
        scan(
            &s,
            &[
                "--cache",
                store.to_str().unwrap(),
                "--shard",
                &shard,
                "--out",
                part.to_str().unwrap(),
            ],
        );
    }
    let before: Vec<Vec<u8>> = stores.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let joined = s.out.join("joined.sqlite3");
    let out = cxr()
        .args(["cache", "import", "--cache"])
        .arg(&joined)
        .args(&stores)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains("new results"), "{said}");
    // Importing again adds nothing.
    let out = cxr()
        .args(["cache", "import", "--cache"])
        .arg(&joined)
        .args(&stores)
        .output()
        .unwrap();
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains(": 0 new results, 0 files"), "{said}");
    // The shards' stores were only read.
    for (p, b) in stores.iter().zip(&before) {
        assert_eq!(&std::fs::read(p).unwrap(), b, "{p:?}");
    }
    // A whole scan with the joined store takes from it what a second scan with one store of
    // the whole folder would.
    let whole = s.out.join("whole.sqlite3");
    scan(&s, &["--cache", whole.to_str().unwrap()]);
    let expected = stored_count(&scan(&s, &["--cache", whole.to_str().unwrap()]));
    assert!(expected >= 12);
    let err = scan(&s, &["--cache", joined.to_str().unwrap()]);
    assert_eq!(stored_count(&err), expected, "{err}");
    // Itself: refused.
    let out = cxr()
        .args(["cache", "import", "--cache"])
        .arg(&joined)
        .arg(&joined)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("into itself"));
}

/// The "N from the results store" count of a summary line (0 when it says none).
fn stored_count(err: &str) -> i64 {
    err.split(" from the results store")
        .next()
        .filter(|_| err.contains(" from the results store"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
