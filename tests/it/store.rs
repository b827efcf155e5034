//! The results store: reuse, invalidation, model separation, crash safety, sharing, bad stores.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cxr_triage::results::store::{FileKey, Store, content_hash};
use cxr_triage::results::{ImageInfo, Outcome};

use crate::common::{cxr, cxr_std, tiny_model, write_png8};

struct Setup {
    _dirs: Vec<tempfile::TempDir>,
    data: PathBuf,
    model: PathBuf,
    cache: PathBuf,
}

fn setup(images: usize) -> Setup {
    let (models, data, cache) = (tempdir(), tempdir(), tempdir());
    let model = tiny_model(models.path());
    std::fs::create_dir_all(data.path().join("normal")).unwrap();
    for i in 0..images {
        write_png8(
            &data.path().join(format!("normal/{i:03}.png")),
            40 + i as u32,
            48,
        );
    }
    Setup {
        data: data.path().to_path_buf(),
        model,
        cache: cache.path().join("store.sqlite3"),
        _dirs: vec![models, data, cache],
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `scan` with the setup's model and store; returns (stdout, stderr).
fn scan(s: &Setup, extra: &[&str]) -> (String, String) {
    let out = cxr()
        .args(["scan", s.data.to_str().unwrap(), "--model"])
        .arg(&s.model)
        .arg("--cache")
        .arg(&s.cache)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.code().is_some_and(|c| c <= 1), "{out:?}");
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn stored_count(stderr: &str) -> usize {
    stderr
        .split(" from the results store")
        .next()
        .filter(|_| stderr.contains(" from the results store"))
        .and_then(|head| head.rsplit(' ').next())
        .map_or(0, |n| n.parse().unwrap())
}

fn integrity(path: &Path) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn results_in(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT count(*) FROM results", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_second_scan_takes_every_result_from_the_store_and_prints_the_same_rows() {
    let s = setup(5);
    let (first, err1) = scan(&s, &[]);
    assert_eq!(stored_count(&err1), 0, "{err1}");
    let (second, err2) = scan(&s, &[]);
    assert_eq!(stored_count(&err2), 5, "{err2}");
    assert_eq!(first, second);
    // --no-cache scores afresh and says nothing about the store.
    let (third, err3) = scan(&s, &["--no-cache"]);
    assert_eq!(stored_count(&err3), 0, "{err3}");
    assert_eq!(first, third);
}

#[test]
fn a_changed_file_is_scored_again_and_a_moved_one_is_found_by_its_content() {
    let s = setup(4);
    scan(&s, &[]);
    // Changed content (and size): scored again.
    write_png8(&s.data.join("normal/000.png"), 90, 90);
    // Moved: same bytes under a new name, found by hash.
    std::fs::rename(
        s.data.join("normal/001.png"),
        s.data.join("normal/moved.png"),
    )
    .unwrap();
    let (_, err) = scan(&s, &[]);
    assert_eq!(stored_count(&err), 3, "{err}");
    let (_, err) = scan(&s, &[]);
    assert_eq!(stored_count(&err), 4, "{err}");
}

#[test]
fn another_model_does_not_see_the_first_models_results() {
    let s = setup(3);
    scan(&s, &[]);
    let other_dir = tempdir();
    let other = tiny_model(other_dir.path());
    let out = cxr()
        .args(["scan", s.data.to_str().unwrap(), "--model"])
        .arg(&other)
        .arg("--cache")
        .arg(&s.cache)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stored_count(&err), 0, "{err}");
    assert_eq!(results_in(&s.cache), 6);
}

#[test]
fn the_store_never_goes_inside_the_image_folder() {
    let s = setup(2);
    let inside = s.data.join("store.sqlite3");
    let out = cxr()
        .args(["scan", s.data.to_str().unwrap(), "--model"])
        .arg(&s.model)
        .arg("--cache")
        .arg(&inside)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("inside the image folder"), "{err}");
    assert!(!inside.exists());
}

#[test]
fn a_damaged_or_newer_store_is_reported_and_the_scan_still_runs() {
    let s = setup(2);
    std::fs::write(
        &s.cache,
        b"this is not a database, just some text ".repeat(200),
    )
    .unwrap();
    let (rows, err) = scan(&s, &[]);
    assert!(err.contains("running without the results store"), "{err}");
    assert_eq!(rows.lines().count(), 3, "header + 2 rows");

    std::fs::remove_file(&s.cache).unwrap();
    let conn = rusqlite::Connection::open(&s.cache).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let (rows, err) = scan(&s, &[]);
    assert!(err.contains("newer cxr-triage (schema 99"), "{err}");
    assert_eq!(rows.lines().count(), 3);
}

#[test]
fn kill_9_in_the_middle_of_a_scan_keeps_the_store_whole_and_the_finished_rows() {
    let s = setup(60);
    // CXR_TRIAGE_TEST_SLOW_MS (debug builds only) slows each result down so that the kill
    // lands in the middle of the scan, after some batches were written.
    let mut child = cxr_std()
        .args(["scan", s.data.to_str().unwrap(), "--model"])
        .arg(&s.model)
        .arg("--cache")
        .arg(&s.cache)
        .args(["--quiet", "--jobs", "1", "--batch", "1"])
        .env("CXR_TRIAGE_TEST_SLOW_MS", "40")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut seen = 0;
    while started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
        if s.cache.exists() {
            // Reading while the writer runs is what WAL allows; a locked moment just retries.
            seen = rusqlite::Connection::open(&s.cache)
                .and_then(|c| c.query_row("SELECT count(*) FROM results", [], |r| r.get(0)))
                .unwrap_or(0);
            if seen >= 1 {
                break;
            }
        }
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the scan finished before the kill: make it slower"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(seen >= 1);
    assert_eq!(integrity(&s.cache), "ok");
    let kept = results_in(&s.cache);
    assert!(kept >= seen && kept < 60, "kept {kept} of 60 (seen {seen})");
    // The next scan takes what was kept and scores the rest.
    let (rows, err) = scan(&s, &[]);
    assert_eq!(stored_count(&err) as i64, kept, "{err}");
    assert_eq!(rows.lines().count(), 61);
    assert_eq!(results_in(&s.cache), 60);
    assert_eq!(integrity(&s.cache), "ok");
}

#[test]
fn two_processes_can_fill_one_store_at_the_same_time() {
    let s = setup(30);
    let spawn = || {
        cxr_std()
            .args(["scan", s.data.to_str().unwrap(), "--model"])
            .arg(&s.model)
            .arg("--cache")
            .arg(&s.cache)
            .args(["--quiet", "--batch", "1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for out in [&a, &b] {
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(integrity(&s.cache), "ok");
    assert_eq!(results_in(&s.cache), 30);
}

#[test]
fn cache_info_and_clear() {
    let s = setup(2);
    scan(&s, &[]);
    let info = cxr()
        .args(["cache", "info", "--cache"])
        .arg(&s.cache)
        .output()
        .unwrap();
    let text = String::from_utf8(info.stdout).unwrap();
    assert!(text.contains("2 results for 2 files"), "{text}");
    assert!(text.contains("tiny:"), "{text}");
    let clear = cxr()
        .args(["cache", "clear", "--cache"])
        .arg(&s.cache)
        .output()
        .unwrap();
    assert!(
        String::from_utf8(clear.stdout)
            .unwrap()
            .starts_with("cleared")
    );
    assert!(!s.cache.exists());
    let (_, err) = scan(&s, &[]);
    assert_eq!(stored_count(&err), 0);
}

#[test]
fn a_decode_error_is_kept_for_this_version_only() {
    let dir = tempdir();
    let path = dir.path().join("store.sqlite3");
    let file = dir.path().join("broken.png");
    std::fs::write(&file, b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let key = FileKey::stat(&file).unwrap();
    let hash = content_hash(&std::fs::read(&file).unwrap());
    let store = Store::open(&path, "m:1").unwrap();
    let failed = Outcome::Failed {
        info: None,
        error: "corrupt".into(),
    };
    store.put(key.clone(), hash, &failed, None);
    store.flush();
    assert!(matches!(
        store.by_file(&key).map(|h| h.outcome),
        Some(Outcome::Failed { .. })
    ));
    drop(store);
    // As if an older version had stored it: the result and the file row's copy of it.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("UPDATE results SET version = '0.0.1'; UPDATE files SET version = '0.0.1';")
        .unwrap();
    drop(conn);
    let store = Store::open(&path, "m:1").unwrap();
    assert!(
        store.by_file(&key).is_none(),
        "another version's error is not reused"
    );
    assert!(store.by_hash(hash).is_none());
}

#[test]
fn a_stored_score_comes_back_exactly() {
    let dir = tempdir();
    let path = dir.path().join("store.sqlite3");
    let file = dir.path().join("a.png");
    write_png8(&file, 30, 30);
    let key = FileKey::stat(&file).unwrap();
    let scored = Outcome::Scored {
        info: ImageInfo {
            format: cxr_triage::imaging::Format::Png,
            width: 30,
            height: 30,
            bit_depth: 8,
            dicom: None,
        },
        probs: vec![0.1, 0.2000001, 0.6999999],
        unusual: Some(1.25),
        border: Some(0.4375),
    };
    let store = Store::open(&path, "m:1").unwrap();
    store.put(key.clone(), 7, &scored, Some([1, 2, 3, u64::MAX]));
    store.flush();
    let hit = store.by_file(&key).unwrap();
    assert_eq!(hit.outcome, scored);
    assert_eq!(hit.hash, 7);
    assert_eq!(hit.dhash, Some([1, 2, 3, u64::MAX]));
    assert!(Store::open(&path, "m:2").unwrap().by_file(&key).is_none());
}

/// A store of an older schema `version` (the tables of schema 1 with the result columns
/// `added` since, e.g. `"unusual REAL,"`) holding a PNG `a.png` made in `dir` (content hash 9)
/// and its score for model `m:1`; `more` ends the result's values (`", 0.5"`).
fn old_store(dir: &Path, version: i64, added: &str, more: &str) -> (PathBuf, FileKey) {
    let path = dir.join("store.sqlite3");
    let file = dir.join("a.png");
    write_png8(&file, 30, 30);
    let key = FileKey::stat(&file).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE files (path BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
             hash BLOB NOT NULL, seen INTEGER NOT NULL);
         CREATE TABLE results (model TEXT NOT NULL, hash BLOB NOT NULL, status TEXT NOT NULL,
             error TEXT, info TEXT, probs BLOB, dhash BLOB, version TEXT NOT NULL,
             created INTEGER NOT NULL, {added} PRIMARY KEY (model, hash));
         PRAGMA user_version = {version};"
    ))
    .unwrap();
    let hash = 9u128.to_le_bytes().to_vec();
    conn.execute(
        "INSERT INTO files VALUES (?1, ?2, ?3, ?4, 0)",
        rusqlite::params![key.path, key.size as i64, key.mtime_ns, hash],
    )
    .unwrap();
    let probs: Vec<u8> = [0.25f32, 0.5, 0.25]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    conn.execute(
        &format!(
            "INSERT INTO results VALUES ('m:1', ?1, 'done', NULL, ?2, ?3, NULL, '0.0.1', 0{more})"
        ),
        rusqlite::params![
            hash,
            r#"{"format":"png","width":30,"height":30,"bit_depth":8,"dicom":null}"#,
            probs
        ],
    )
    .unwrap();
    (path, key)
}

fn schema_of(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

/// A store written before the unusual-input score (schema 1) opens, gains the column, and its
/// results still come back (without a score).
#[test]
fn a_schema_1_store_is_migrated_and_keeps_its_results() {
    let dir = tempdir();
    let (path, key) = old_store(dir.path(), 1, "", "");
    let store = Store::open(&path, "m:1").unwrap();
    let hit = store.by_file(&key).expect("the schema-1 result");
    match hit.outcome {
        Outcome::Scored { probs, unusual, .. } => {
            assert_eq!(probs, [0.25, 0.5, 0.25]);
            assert_eq!(unusual, None);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(schema_of(&path), cxr_triage::results::store::SCHEMA_VERSION);
}

/// Schema 2 stores kept DICOM patient IDs: opening one removes them from every file of the
/// store (the freed bytes overwritten), and the result itself still comes back.
#[test]
fn a_schema_2_store_loses_its_patient_ids_and_keeps_its_results() {
    let dir = tempdir();
    let path = dir.path().join("store.sqlite3");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE files (path BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
             hash BLOB NOT NULL, seen INTEGER NOT NULL);
         CREATE TABLE results (model TEXT NOT NULL, hash BLOB NOT NULL, status TEXT NOT NULL,
             error TEXT, info TEXT, probs BLOB, dhash BLOB, version TEXT NOT NULL,
             created INTEGER NOT NULL, unusual REAL, PRIMARY KEY (model, hash));
         PRAGMA user_version = 2;",
    )
    .unwrap();
    let probs: Vec<u8> = [0.25f32, 0.5, 0.25]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let info = r#"{"format":"dicom","width":30,"height":30,"bit_depth":8,"dicom":{"modality":"DX","view_position":"PA","body_part":null,"bits_stored":8,"photometric":"MONOCHROME2","study_date":null,"patient_id":"SECRET-4242","frames":1,"transfer_syntax":"x"}}"#;
    for h in 0..50u128 {
        conn.execute(
            "INSERT INTO results VALUES ('m:1', ?1, 'done', NULL, ?2, ?3, NULL, '0.0.1', 0, 0.5)",
            rusqlite::params![h.to_le_bytes().to_vec(), info, probs],
        )
        .unwrap();
    }
    drop(conn);
    let store = Store::open(&path, "m:1").unwrap();
    match store.by_hash(7).expect("the schema-2 result").outcome {
        Outcome::Scored { info, probs, .. } => {
            assert_eq!(probs, [0.25, 0.5, 0.25]);
            let dicom = info.dicom.unwrap();
            assert_eq!(dicom.modality.as_deref(), Some("DX"));
            assert_eq!(dicom.patient_id, None);
        }
        other => panic!("{other:?}"),
    }
    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(bytes) = std::fs::read(PathBuf::from(&p)) {
            assert!(
                !bytes.windows(11).any(|w| w == b"SECRET-4242"),
                "{p:?} still holds a patient ID at {:?} of {}",
                bytes.windows(11).position(|w| w == b"SECRET-4242"),
                bytes.len()
            );
        }
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The store holds file paths: its folder is created 0700 and every file of it 0600.
#[cfg(unix)]
#[test]
fn a_new_store_is_readable_by_its_owner_only() {
    let dir = tempdir();
    let folder = dir.path().join("cache/cxr-triage");
    let path = folder.join("results.sqlite3");
    let file = dir.path().join("a.png");
    write_png8(&file, 30, 30);
    let store = Store::open(&path, "m:1").unwrap();
    assert_eq!(store.warning(), None);
    store.put(
        FileKey::stat(&file).unwrap(),
        1,
        &Outcome::Failed {
            info: None,
            error: "x".into(),
        },
        None,
    );
    store.flush();
    assert_eq!(mode(&folder), 0o700);
    assert_eq!(mode(&dir.path().join("cache")), 0o700);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        assert!(p.exists(), "{p:?} (open store in WAL mode)");
        assert_eq!(mode(&p), 0o600, "{p:?}");
    }
}

/// A store that others can read (an older version's, or chmod by hand) is reported, once, on
/// stderr; the scan still uses it.
#[cfg(unix)]
#[test]
fn a_store_readable_by_others_is_reported() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup(2);
    scan(&s, &[]);
    std::fs::set_permissions(&s.cache, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_, err) = scan(&s, &[]);
    assert_eq!(
        err.matches("can be read by other users").count(),
        1,
        "{err}"
    );
    assert!(err.contains("chmod 600"), "{err}");
    assert_eq!(stored_count(&err), 2, "{err}");
}

fn scored_png(width: u32) -> Outcome {
    Outcome::Scored {
        info: ImageInfo {
            format: cxr_triage::imaging::Format::Png,
            width,
            height: 30,
            bit_depth: 8,
            dicom: None,
        },
        probs: vec![0.25, 0.5, 0.25],
        unusual: None,
        border: None,
    }
}

/// Many files looked up at once answer as each one alone would: in the order asked, a file
/// asked twice twice, a changed or unknown file not at all.
#[test]
fn a_batch_of_lookups_answers_each_file_in_order() {
    let dir = tempdir();
    let path = dir.path().join("store.sqlite3");
    let store = Store::open(&path, "m:1").unwrap();
    let mut keys = Vec::new();
    for i in 0..40u32 {
        let file = dir.path().join(format!("img-{i}.png"));
        write_png8(&file, 30, 30);
        let key = FileKey::stat(&file).unwrap();
        if i % 4 != 3 {
            store.put(key.clone(), u128::from(i) + 1, &scored_png(i), None);
        }
        keys.push(key);
    }
    store.flush();
    // Changed since it was stored: another size.
    keys[5].size += 1;
    let mut asked: Vec<FileKey> = keys.iter().rev().cloned().collect();
    asked.push(keys[8].clone());
    let hits = store.by_files(&asked);
    assert_eq!(hits.len(), asked.len());
    for (key, hit) in asked.iter().zip(&hits) {
        let alone = store.by_file(key);
        assert_eq!(hit.as_ref().map(|h| h.hash), alone.as_ref().map(|h| h.hash));
        assert_eq!(
            hit.as_ref().map(|h| &h.outcome),
            alone.as_ref().map(|h| &h.outcome)
        );
    }
    let width = |h: &Option<cxr_triage::results::store::Hit>| match h.as_ref().map(|h| &h.outcome) {
        Some(Outcome::Scored { info, .. }) => Some(info.width),
        _ => None,
    };
    let expected: Vec<Option<u32>> = asked
        .iter()
        .map(|k| {
            let i = keys.iter().position(|x| x == k)? as u32;
            (i % 4 != 3 && i != 5).then_some(i)
        })
        .collect();
    assert_eq!(hits.iter().map(width).collect::<Vec<_>>(), expected);
    assert_eq!(
        width(&hits[40]),
        Some(8),
        "a file asked twice is answered twice"
    );
    assert!(hits[39 - 5].is_none(), "a changed file is not answered");
    assert!(store.by_files(&[]).is_empty());
}

/// Schema 4 kept both tables with a rowid: opening one rebuilds them keyed by path and by
/// (model, hash), keeping every file and result.
#[test]
fn a_schema_4_store_is_rebuilt_without_rowids_and_keeps_its_results() {
    let dir = tempdir();
    let (path, key) = old_store(dir.path(), 4, "unusual REAL, border REAL,", ", 0.75, 0.125");
    let store = Store::open(&path, "m:1").unwrap();
    let hit = store.by_file(&key).expect("the schema-4 result");
    assert_eq!(hit.hash, 9);
    match hit.outcome {
        Outcome::Scored {
            probs,
            unusual,
            border,
            ..
        } => {
            assert_eq!(probs, [0.25, 0.5, 0.25]);
            assert_eq!((unusual, border), (Some(0.75), Some(0.125)));
        }
        other => panic!("{other:?}"),
    }
    drop(store);
    assert_eq!(schema_of(&path), cxr_triage::results::store::SCHEMA_VERSION);
    let conn = rusqlite::Connection::open(&path).unwrap();
    for table in ["files", "results"] {
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        assert!(sql.contains("WITHOUT ROWID"), "{table}: {sql}");
    }
}

/// Files stated a folder at a time get the keys each would get alone: folders changing, a
/// missing file, links followed (a dangling one is missing).
#[test]
fn many_files_are_stated_as_each_alone() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let mut paths = Vec::new();
    for i in 0..5 {
        let p = dir.path().join(format!("a{i}.png"));
        write_png8(&p, 10 + i, 10);
        paths.push(p);
    }
    paths.push(dir.path().join("missing.png"));
    let other = dir.path().join("sub/b.png");
    write_png8(&other, 12, 12);
    paths.push(other.clone());
    paths.push(dir.path().join("a1.png"));
    paths.push(dir.path().join("a2.png"));
    #[cfg(unix)]
    {
        let link = dir.path().join("link.png");
        std::os::unix::fs::symlink(&other, &link).unwrap();
        let dangling = dir.path().join("dangling.png");
        std::os::unix::fs::symlink(dir.path().join("gone.png"), &dangling).unwrap();
        paths.extend([link, dangling]);
    }
    let keys = FileKey::stat_many(paths.iter().map(PathBuf::as_path));
    let alone: Vec<Option<FileKey>> = paths.iter().map(|p| FileKey::stat(p).ok()).collect();
    assert_eq!(keys, alone);
    assert!(keys[5].is_none() && keys.last().unwrap().is_none());
    assert_eq!(keys.iter().flatten().count(), paths.len() - 2);
    // The modification time is the one the file system reports, in nanoseconds.
    let since_epoch = std::fs::metadata(&paths[0])
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    assert_eq!(
        keys[0].as_ref().unwrap().mtime_ns as u128,
        since_epoch.as_nanos()
    );
}

/// The key of a 30x30 PNG `name` made in `dir`.
fn png_key(dir: &Path, name: &str) -> FileKey {
    let file = dir.join(name);
    write_png8(&file, 30, 30);
    FileKey::stat(&file).unwrap()
}

/// A file's own row answers for the model that stored it last (its copy of the outcome: what
/// makes reopening a big folder read a page per dozen files, not one per file); the results
/// table answers for any other model, and a file found by its content gets the copy too.
#[test]
fn a_files_row_answers_for_its_last_model_and_the_results_table_for_the_rest() {
    let dir = tempdir();
    let path = dir.path().join("store.sqlite3");
    let key = |name: &str| png_key(dir.path(), name);
    let (a, b, c) = (key("a.png"), key("b.png"), key("c.png"));
    let width = |store: &Store, k: &FileKey| match store.by_file(k).map(|h| h.outcome) {
        Some(Outcome::Scored { info, .. }) => Some(info.width),
        _ => None,
    };
    let m1 = Store::open(&path, "m:1").unwrap();
    m1.put(a.clone(), 1, &scored_png(10), None);
    m1.put(b.clone(), 2, &scored_png(20), None);
    m1.flush();
    let m2 = Store::open(&path, "m:2").unwrap();
    m2.put(b.clone(), 2, &scored_png(21), None);
    m2.flush();
    assert_eq!(width(&m1, &b), Some(20), "b's row holds m:2's outcome now");
    assert_eq!(width(&m2, &b), Some(21));
    assert!(m2.by_file(&a).is_none(), "m:2 never scored a");
    // c has b's bytes: found by content, then its row gets the copy.
    m1.record_file(c.clone(), 2, &scored_png(20), None);
    m1.flush();
    let hits = m1.by_files(&[a.clone(), b.clone(), c.clone()]);
    let widths: Vec<_> = hits
        .iter()
        .map(|h| match h.as_ref().map(|h| &h.outcome) {
            Some(Outcome::Scored { info, .. }) => Some(info.width),
            _ => None,
        })
        .collect();
    assert_eq!(widths, [Some(10), Some(20), Some(20)]);
    assert_eq!(hits[2].as_ref().map(|h| h.hash), Some(2));
    // Without m:1's results, its copies still answer; b (whose row is m:2's) does not.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("DELETE FROM results WHERE model = 'm:1'", [])
        .unwrap();
    drop(conn);
    let hits = m1.by_files(&[a.clone(), b.clone(), c.clone()]);
    assert_eq!(
        hits.iter().map(Option::is_some).collect::<Vec<_>>(),
        [true, false, true]
    );
    assert_eq!(width(&m2, &b), Some(21));
}

/// A copy this version cannot use (another version's decode error) is not the last word: the
/// results table may hold a newer outcome for the same bytes.
#[test]
fn an_unusable_copy_falls_back_to_the_results_table() {
    let dir = tempdir();
    let path = dir.path().join("store.sqlite3");
    let key = |name: &str| png_key(dir.path(), name);
    let (a, d) = (key("a.png"), key("d.png"));
    let store = Store::open(&path, "m:1").unwrap();
    let failed = Outcome::Failed {
        info: None,
        error: "cannot decode".into(),
    };
    store.put(a.clone(), 5, &failed, None);
    store.flush();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("UPDATE results SET version = '0.0.1'; UPDATE files SET version = '0.0.1';")
        .unwrap();
    drop(conn);
    assert!(store.by_file(&a).is_none(), "an older version's error");
    // The same bytes scored since (under another path): a's row still holds the old error.
    store.put(d, 5, &scored_png(30), None);
    store.flush();
    match store.by_file(&a).map(|h| h.outcome) {
        Some(Outcome::Scored { info, .. }) => assert_eq!(info.width, 30),
        other => panic!("{other:?}"),
    }
}

/// Schema 5 kept no copy of a file's outcome in its row: opening one adds the (empty)
/// columns at once, and the result is found through the results table.
#[test]
fn a_schema_5_store_gains_the_copy_columns_and_keeps_its_results() {
    let dir = tempdir();
    let (path, key) = old_store(dir.path(), 5, "unusual REAL, border REAL,", ", 0.75, 0.125");
    let store = Store::open(&path, "m:1").unwrap();
    let hit = store.by_file(&key).expect("the schema-5 result");
    assert_eq!(hit.hash, 9);
    assert!(matches!(
        hit.outcome,
        Outcome::Scored {
            unusual: Some(0.75),
            ..
        }
    ));
    drop(store);
    assert_eq!(schema_of(&path), cxr_triage::results::store::SCHEMA_VERSION);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let copy: Option<String> = conn
        .query_row("SELECT model FROM files", [], |r| r.get(0))
        .unwrap();
    assert_eq!(copy, None, "one lookup alone fills no copy");
}

/// Rows without a copy (a store from before schema 6) get theirs when a batch of lookups
/// (a reopened folder's) finds their results: the next reopen reads the rows alone.
#[test]
fn a_batch_of_lookups_fills_the_copies_an_older_store_lacks() {
    let dir = tempdir();
    let path = dir.path().join("store.sqlite3");
    let store = Store::open(&path, "m:1").unwrap();
    let keys: Vec<FileKey> = (0..40u32)
        .map(|i| {
            let file = dir.path().join(format!("img-{i}.png"));
            write_png8(&file, 30, 30);
            let key = FileKey::stat(&file).unwrap();
            store.put(key.clone(), u128::from(i) + 1, &scored_png(i), None);
            key
        })
        .collect();
    store.flush();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let copies = || -> i64 {
        conn.query_row("SELECT count(*) FROM files WHERE model = 'm:1'", [], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_eq!(copies(), 40);
    conn.execute_batch(
        "UPDATE files SET model = NULL, status = NULL, error = NULL, info = NULL, probs = NULL,
             dhash = NULL, version = NULL, unusual = NULL, border = NULL",
    )
    .unwrap();
    let before = store.by_files(&keys);
    assert_eq!(copies(), 40, "the batch filled every copy");
    let after = store.by_files(&keys);
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!((a.hash, &a.outcome), (b.hash, &b.outcome));
        assert_eq!(a.outcome, scored_png(i as u32));
    }
    // Answered by the rows alone now.
    conn.execute("DELETE FROM results", []).unwrap();
    assert!(store.by_files(&keys).iter().all(Option::is_some));
}
