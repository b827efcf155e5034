//! The results store: every outcome, kept in SQLite so that nothing is computed twice.
//!
//! Two tables. `files` maps a file (absolute path, size, modification time) to the hash of its
//! bytes (xxh3-128); `results` maps (model id, content hash) to the outcome. Reopening a folder
//! looks each file up by path, size and mtime without reading it; a file that moved or was
//! copied is read and hashed once and then found by its content. A different model (other
//! name, weights, labels, preprocessing or temperature) has another model id and never sees
//! these results.
//!
//! Decode errors are kept too (a broken file stays broken) but only reused by the same
//! cxr-triage version, since a newer one may read what an older one could not. Files that
//! could not be read at all (permission denied, walk errors) are not stored.
//!
//! Privacy: the store's folder is created `0700` and its files (`results.sqlite3`, `-wal`,
//! `-shm`) `0600`, since they hold file paths; an existing store that others can read is
//! reported (once per run). PHI (patient ID, accession number) is never written: a result from
//! the store shown with `--show-phi` reads it again from the file's header. Schema 3 removed
//! the patient IDs that earlier versions kept; schema 4 added the border-attention share;
//! schema 5 keyed both tables without a rowid (one B-tree per lookup, not an index and then
//! the table: reopening a million stored results searches half as many); schema 6 keeps a copy
//! of each file's last outcome in its `files` row (see [`FILES`]).
//!
//! Durability: WAL journal, writes batched in transactions of at most [`BATCH`] outcomes or
//! [`FLUSH_EVERY`]; a crash (even `kill -9`) loses at most the batch in flight and never
//! corrupts the file. Several processes may share one store (WAL readers do not block, writers
//! wait up to 5 s for each other). Any store failure is reported once and the run goes on
//! without the store: the cache must never stop a scan.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::types::Value;
use rusqlite::vtab::array::{Array, load_module};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::imaging::dhash::DHash;
use crate::model::Manifest;
use crate::results::{ImageInfo, Outcome};

/// Schema version, in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 6;
/// The `files` table: a file's path, size and mtime -> the hash of its bytes, and a copy of
/// the outcome last stored for it (`model` and the result columns; NULL when none was). Keyed
/// by path alone (no rowid): one B-tree to search per lookup.
///
/// The copy is what makes reopening a big folder fast: `results` is keyed by content hash, so
/// a folder's results lie on pages spread over the whole table, one page read per file; a
/// folder's `files` rows lie together, a page read per dozen files. `results` stays the
/// reference (a moved or copied file is found there by its content, and another model's
/// outcome); a copy is always an outcome its model gave for those bytes.
const FILES: &str = "(
    path BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash BLOB NOT NULL,
    seen INTEGER NOT NULL,
    model TEXT,
    status TEXT,
    error TEXT,
    info TEXT,
    probs BLOB,
    dhash BLOB,
    version TEXT,
    unusual REAL,
    border REAL
) WITHOUT ROWID";
/// The columns of `files`, in order.
const FILE_COLUMNS: &str = "path, size, mtime_ns, hash, seen, model, status, error, info, probs, dhash, version, unusual, border";
/// The `results` table: (model, content hash) -> outcome, keyed by both (no rowid).
const RESULTS: &str = "(
    model TEXT NOT NULL,
    hash BLOB NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    info TEXT,
    probs BLOB,
    dhash BLOB,
    version TEXT NOT NULL,
    created INTEGER NOT NULL,
    unusual REAL,
    border REAL,
    PRIMARY KEY (model, hash)
) WITHOUT ROWID";
/// The columns of `results`, in order.
const RESULT_COLUMNS: &str =
    "model, hash, status, error, info, probs, dhash, version, created, unusual, border";
/// The columns a file's row copies from its result: the model, then [`raw_row`]'s eight.
const COPY_COLUMNS: &str = "model, status, error, info, probs, dhash, version, unusual, border";
/// Largest number of outcomes written in one transaction.
pub const BATCH: usize = 64;
/// Longest time an outcome waits in memory before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Fewest empty copies [`Store::by_files`] fills at once (a write transaction each time):
/// a reopened folder's batches fill theirs, a single lookup (`scan`'s, one per file) leaves
/// the row as it is.
const FILL_AT_LEAST: usize = 32;
/// How long a writer waits for another process's transaction before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// File name inside the cache folder.
pub const FILE_NAME: &str = "results.sqlite3";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("results store {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("results store {}: cannot create its folder: {source}", path.display())]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("results store {}: cannot create it: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "results store {} was written by a newer cxr-triage (schema {found}, this one reads {SCHEMA_VERSION})",
        path.display()
    )]
    Newer { path: PathBuf, found: i64 },
    #[error("results store {}: inside the image folder, which cxr-triage never writes to", .0.display())]
    InsideImages(PathBuf),
    #[error(
        "results store {}: schema {found}, not {SCHEMA_VERSION}: open it once with this \
         cxr-triage (`cxr-triage cache info --cache {}`) to bring it up to date",
        path.display(),
        path.display()
    )]
    OtherSchema { path: PathBuf, found: i64 },
    #[error("results store {}: cannot import a store into itself", .0.display())]
    SameStore(PathBuf),
}

/// Where a file was seen: absolute path, size and modification time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileKey {
    pub path: Vec<u8>,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileKey {
    /// The key for `path` from its metadata (the path is made absolute, not canonical).
    pub fn new(path: &Path, meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let mtime_ns = {
            use std::os::unix::fs::MetadataExt;
            mtime_ns(meta.mtime(), meta.mtime_nsec())
        };
        #[cfg(not(unix))]
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64);
        Self::of(path, meta.len(), mtime_ns)
    }

    fn of(path: &Path, size: u64, mtime_ns: i64) -> Self {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Self {
            path: abs.into_os_string().into_encoded_bytes(),
            size,
            mtime_ns,
        }
    }

    /// The key for `path` from a fresh `stat`.
    pub fn stat(path: &Path) -> std::io::Result<Self> {
        Ok(Self::new(path, &std::fs::metadata(path)?))
    }

    /// [`FileKey::stat`] for many paths (`None` where it fails). A folder met for a second
    /// file in a row is opened once and the rest of the run looked up in it (`fstatat`),
    /// rather than the whole path resolved again for every file: reopening a folder stats a
    /// million files.
    pub fn stat_many<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<Option<Self>> {
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            use std::os::unix::ffi::OsStrExt;
            // The folder of the last path, and (from its second file on) the folder opened.
            let mut last: Option<&Path> = None;
            let mut opened: Option<Option<std::fs::File>> = None;
            let mut keys = Vec::new();
            for path in paths {
                let (parent, name) = (path.parent(), path.file_name());
                let same = parent.is_some() && parent == last;
                last = parent;
                let (Some(parent), Some(name), true) = (parent, name, same) else {
                    opened = None;
                    keys.push(Self::stat(path).ok());
                    continue;
                };
                let dir = opened.get_or_insert_with(|| {
                    let dir = if parent.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        parent
                    };
                    std::fs::File::open(dir).ok()
                });
                let key = match (dir.as_ref(), std::ffi::CString::new(name.as_bytes())) {
                    (Some(dir), Ok(name)) => {
                        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                        // SAFETY: a valid directory descriptor, a NUL-terminated name and room
                        // for the answer; `st` is read only when the call succeeded.
                        let ok = unsafe {
                            libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), 0)
                        } == 0;
                        ok.then(|| {
                            // SAFETY: fstatat succeeded and filled it.
                            let st = unsafe { st.assume_init() };
                            Self::of(
                                path,
                                st.st_size as u64,
                                mtime_ns(st.st_mtime, st.st_mtime_nsec),
                            )
                        })
                    }
                    _ => Self::stat(path).ok(),
                };
                keys.push(key);
            }
            keys
        }
        #[cfg(not(unix))]
        paths.into_iter().map(|p| Self::stat(p).ok()).collect()
    }
}

/// A modification time (seconds and nanoseconds since the epoch) in nanoseconds; 0 before
/// the epoch, saturating far after it.
#[cfg(unix)]
fn mtime_ns(secs: i64, nsec: i64) -> i64 {
    if secs < 0 {
        return 0;
    }
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// An outcome found in the store.
#[derive(Clone, Debug)]
pub struct Hit {
    pub hash: u128,
    pub outcome: Outcome,
    pub dhash: Option<DHash>,
}

struct Pending {
    key: FileKey,
    hash: u128,
    outcome: (Outcome, Option<DHash>),
    /// Written to `results` too (else only to the file's row: the outcome is there already).
    new_result: bool,
}

#[derive(Default)]
struct Queue {
    items: Vec<Pending>,
    last_flush: Option<Instant>,
}

/// An open store, for one model. Shared between threads (`&Store` is enough for everything).
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    model: String,
    queue: Mutex<Queue>,
    /// Set after the first failure: the store is then left alone for the rest of the run.
    broken: AtomicBool,
    problem: Mutex<Option<String>>,
    warning: Option<String>,
}

/// The store's default place: `$XDG_CACHE_HOME/cxr-triage/results.sqlite3`, else
/// `~/.cache/cxr-triage/results.sqlite3`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("cxr-triage").join(FILE_NAME))
}

/// What a model's results are filed under: its name and a digest of everything that changes
/// its outputs (weights hash, labels, output kind, input spec, temperature).
pub fn model_id(manifest: &Manifest) -> String {
    let identity = serde_json::json!({
        "sha256": manifest.sha256.to_ascii_lowercase(),
        "labels": manifest.labels,
        "output": manifest.output,
        "input": manifest.input,
        "temperature": manifest.temperature,
        "architecture": manifest.architecture,
        "cxrnet": manifest.cxrnet,
    });
    let digest = crate::model::sha256_hex(identity.to_string().as_bytes());
    format!("{}:{}", manifest.name, &digest[..16])
}

/// xxh3-128 of a file's bytes.
pub fn content_hash(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let sql = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    // `rarray(?)`: looking up a batch of paths in one statement.
    load_module(&conn).map_err(sql)?;
    // Switching to WAL and creating the schema can be answered "database is locked" at once,
    // without the busy handler, while another process does the same to a new store (SQLite
    // refuses rather than risk a deadlock). Those steps are idempotent: retry them for a while.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match set_up(&conn, path) {
            Err(StoreError::Sqlite { source, .. })
                if is_busy(&source) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.map(|()| conn),
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Run one migration's SQL (a transaction that ends by setting `user_version` to `to`). On
/// failure it is rolled back, and it is no failure when another opener has migrated the store
/// in the meantime.
fn migrate(conn: &Connection, sql: &str, to: i64) -> rusqlite::Result<()> {
    let Err(e) = conn.execute_batch(sql) else {
        return Ok(());
    };
    let _ = conn.execute_batch("ROLLBACK");
    let now: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if now < to { Err(e) } else { Ok(()) }
}

/// Check the schema version, switch to WAL, create the tables: every step may run again.
fn set_up(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let sql = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Newer {
            path: path.to_path_buf(),
            found,
        });
    }
    // WAL survives a killed process without corruption; NORMAL sync is safe with WAL (a power
    // cut may lose the last transactions, never the file). WAL is a property of the file, so
    // only the first opener switches.
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql)?;
    // Version 1 stores lack the unusual-input score; their rows stay valid (no score).
    if found == 1 {
        migrate(
            conn,
            "BEGIN IMMEDIATE;
             ALTER TABLE results ADD COLUMN unusual REAL;
             PRAGMA user_version = 2;
             COMMIT;",
            2,
        )
        .map_err(sql)?;
    }
    // Versions 1 and 2 kept DICOM patient IDs in `info`: remove them, overwriting the freed
    // bytes (secure_delete), rewrite the file and fold the WAL back so that no old page or
    // frame keeps them either.
    if (1..3).contains(&found) {
        migrate(
            conn,
            "PRAGMA secure_delete = ON;
             BEGIN IMMEDIATE;
             UPDATE results SET info = json_set(info, '$.dicom.patient_id', NULL)
                 WHERE info LIKE '%\"patient_id\":\"%';
             PRAGMA user_version = 3;
             COMMIT;
             PRAGMA secure_delete = OFF;",
            3,
        )
        .map_err(sql)?;
        // Free space inside pages (a leaf that became an interior page, a replaced row) still
        // holds old bytes: VACUUM rewrites every page. Best effort, like the checkpoint (another
        // process may be reading the store now): the rows are clean either way.
        let _ = conn.execute_batch("VACUUM");
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
    // Version 3 stores lack the border-attention share; their rows stay valid (no share).
    if (1..4).contains(&found) {
        migrate(
            conn,
            "BEGIN IMMEDIATE;
             ALTER TABLE results ADD COLUMN border REAL;
             PRAGMA user_version = 4;
             COMMIT;",
            4,
        )
        .map_err(sql)?;
    }
    // Versions 1 to 4 kept both tables with a rowid beside their key: a lookup went through
    // the key's index, then the table. Rebuilt keyed by path and by (model, hash), `files`
    // with schema 6's columns (filled below).
    if (1..5).contains(&found) {
        migrate(
            conn,
            &format!(
                "BEGIN IMMEDIATE;
                 CREATE TABLE files_v5 {FILES};
                 INSERT OR IGNORE INTO files_v5 (path, size, mtime_ns, hash, seen)
                     SELECT path, size, mtime_ns, hash, seen FROM files;
                 DROP TABLE files;
                 ALTER TABLE files_v5 RENAME TO files;
                 CREATE TABLE results_v5 {RESULTS};
                 INSERT OR IGNORE INTO results_v5 ({RESULT_COLUMNS})
                     SELECT {RESULT_COLUMNS} FROM results;
                 DROP TABLE results;
                 ALTER TABLE results_v5 RENAME TO results;
                 PRAGMA user_version = 5;
                 COMMIT;"
            ),
            5,
        )
        .map_err(sql)?;
    }
    // Version 5 kept no copy of a file's outcome in its row (see `FILES`): the columns are
    // added (the rebuild above made them already), empty; a file's first lookup fills its
    // copy ([`Store::by_files`]), so opening stays instant however big the store.
    if (1..6).contains(&found) {
        let added: String = if found == 5 {
            let columns = [
                "model TEXT",
                "status TEXT",
                "error TEXT",
                "info TEXT",
                "probs BLOB",
                "dhash BLOB",
                "version TEXT",
                "unusual REAL",
                "border REAL",
            ];
            columns
                .iter()
                .map(|c| format!("ALTER TABLE files ADD COLUMN {c};"))
                .collect()
        } else {
            String::new()
        };
        migrate(
            conn,
            &format!("BEGIN IMMEDIATE; {added} PRAGMA user_version = 6; COMMIT;"),
            6,
        )
        .map_err(sql)?;
    }
    if found < 1
        && let Err(e) = conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS files {FILES};
             CREATE TABLE IF NOT EXISTS results {RESULTS};
             PRAGMA user_version = {SCHEMA_VERSION};
             COMMIT;"
        ))
    {
        // A failure half-way leaves the transaction open; end it before a retry.
        let _ = conn.execute_batch("ROLLBACK");
        return Err(sql(e));
    }
    Ok(())
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn f32s_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

fn blob_to_f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn dhash_to_blob(h: &DHash) -> Vec<u8> {
    h.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn blob_to_dhash(b: &[u8]) -> Option<DHash> {
    (b.len() == 32).then(|| {
        let mut h = [0u64; 4];
        for (w, c) in h.iter_mut().zip(b.chunks_exact(8)) {
            *w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        h
    })
}

/// The eight result columns, borrowed from the row they were read from.
struct RawRow<'a> {
    status: &'a str,
    error: Option<&'a str>,
    info: Option<&'a str>,
    probs: Option<&'a [u8]>,
    dhash: Option<&'a [u8]>,
    version: &'a str,
    unusual: Option<f64>,
    border: Option<f64>,
}

/// The eight result columns (status, error, info, probs, dhash, version, unusual, border) from
/// `first` on, without copying them; `None` when one has a type this version does not write.
fn raw_row<'a>(r: &'a rusqlite::Row, first: usize) -> Option<RawRow<'a>> {
    use rusqlite::types::FromSql;
    let column = |i: usize| r.get_ref(first + i).ok();
    let real = |i: usize| Option::<f64>::column_result(column(i)?).ok();
    Some(RawRow {
        status: column(0)?.as_str().ok()?,
        error: column(1)?.as_str_or_null().ok()?,
        info: column(2)?.as_str_or_null().ok()?,
        probs: column(3)?.as_blob_or_null().ok()?,
        dhash: column(4)?.as_blob_or_null().ok()?,
        version: column(5)?.as_str().ok()?,
        unusual: real(6)?,
        border: real(7)?,
    })
}

/// Give the file rows at `paths` that hold no copy yet `model`'s result for their content, if
/// any: their next lookup reads the row alone. Best effort: when another process is writing,
/// it is left for another time rather than waited for.
fn fill_copies(c: &Connection, paths: Array, model: &str) {
    let fill = || -> rusqlite::Result<()> {
        c.execute_batch("BEGIN IMMEDIATE")?;
        c.prepare_cached(&format!(
            "UPDATE files SET ({COPY_COLUMNS}) = (
                 SELECT {COPY_COLUMNS} FROM results r WHERE r.model = ?2 AND r.hash = files.hash)
             WHERE path IN rarray(?1) AND model IS NULL"
        ))?
        .execute(params![paths, model])?;
        c.execute_batch("COMMIT")
    };
    let _ = c.busy_timeout(Duration::ZERO);
    if fill().is_err() {
        let _ = c.execute_batch("ROLLBACK");
    }
    let _ = c.busy_timeout(BUSY_TIMEOUT);
}

/// `outcome` for each key in `keys` (of `hits`): moved to the last, copied for any before.
fn give(
    hits: &mut [Option<Hit>],
    keys: impl Iterator<Item = usize>,
    hash: [u8; 16],
    outcome: Outcome,
    dhash: Option<DHash>,
) {
    let (mut outcome, mut keys) = (Some(outcome), keys.peekable());
    while let Some(i) = keys.next() {
        let outcome = if keys.peek().is_some() {
            outcome.clone()
        } else {
            outcome.take()
        };
        hits[i] = outcome.map(|outcome| Hit {
            hash: u128::from_le_bytes(hash),
            outcome,
            dhash,
        });
    }
}

/// Rebuild an outcome from its columns; `None` when the row is not usable (another version's
/// error, a row this version cannot read).
fn outcome_from(raw: RawRow) -> Option<(Outcome, Option<DHash>)> {
    let info: Option<ImageInfo> = match raw.info {
        Some(text) => Some(serde_json::from_str(text).ok()?),
        None => None,
    };
    let dhash = raw.dhash.and_then(blob_to_dhash);
    let outcome = match raw.status {
        "done" => Outcome::Scored {
            info: info?,
            probs: blob_to_f32s(raw.probs?),
            unusual: raw.unusual.map(|v| v as f32),
            border: raw.border.map(|v| v as f32),
        },
        "out of scope" => Outcome::OutOfScope {
            info: info?,
            reason: raw.error?.to_owned(),
        },
        "error" if raw.version == env!("CARGO_PKG_VERSION") => Outcome::Failed {
            info,
            error: raw.error?.to_owned(),
        },
        _ => return None,
    };
    Some((outcome, dhash))
}

/// The columns an outcome is stored in: status, error, info, probs, unusual, border.
type Columns<'a> = (
    &'static str,
    Option<&'a str>,
    Option<&'a ImageInfo>,
    Option<&'a [f32]>,
    Option<f32>,
    Option<f32>,
);

fn status_of(outcome: &Outcome) -> Columns<'_> {
    match outcome {
        Outcome::Scored {
            info,
            probs,
            unusual,
            border,
        } => ("done", None, Some(info), Some(probs), *unusual, *border),
        Outcome::OutOfScope { info, reason } => {
            ("out of scope", Some(reason), Some(info), None, None, None)
        }
        Outcome::Failed { info, error } => ("error", Some(error), info.as_ref(), None, None, None),
    }
}

/// Create the store's folder (`0700`, with any missing parents) and its file (`0600`) when they
/// do not exist. SQLite gives the `-wal` and `-shm` files the database file's mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let folder = |source| StoreError::Folder {
        path: path.to_path_buf(),
        source,
    };
    let mut dirs = std::fs::DirBuilder::new();
    dirs.recursive(true);
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        dirs.mode(0o700);
        file.mode(0o600);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        dirs.create(dir).map_err(folder)?;
    }
    match file.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Create {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A warning when users other than the owner can read the store (made by an older version,
/// or by hand): it holds file paths.
fn readable_by_others(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "results store {} can be read by other users (mode {mode:03o}): it holds file paths; \
                 `chmod 600 {0}*` makes it private",
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

impl Store {
    /// Open (creating when needed) the store at `path` for `model_id`'s results.
    pub fn open(path: &Path, model_id: &str) -> Result<Self, StoreError> {
        create_private(path)?;
        let warning = readable_by_others(path);
        let conn = open_connection(path)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            model: model_id.to_string(),
            queue: Mutex::new(Queue::default()),
            broken: AtomicBool::new(false),
            problem: Mutex::new(None),
            warning,
        })
    }

    /// Said once when the store was opened: it can be read by other users.
    pub fn warning(&self) -> Option<String> {
        self.warning.clone()
    }

    /// Open the store for a run over `root`: the default place unless `path` is given; refused
    /// when it would sit inside the image folder.
    pub fn open_for(root: &Path, path: Option<&Path>, model_id: &str) -> Result<Self, StoreError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => default_path().ok_or_else(|| StoreError::Folder {
                path: PathBuf::from("$XDG_CACHE_HOME/cxr-triage"),
                source: std::io::Error::other("neither XDG_CACHE_HOME nor HOME is set"),
            })?,
        };
        if crate::catalog::is_inside(&path, root) {
            return Err(StoreError::InsideImages(path));
        }
        Self::open(&path, model_id)
    }

    /// The first failure of this run, if any (the store was left alone after it).
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn fail(&self, e: rusqlite::Error) {
        if !self.broken.swap(true, Ordering::SeqCst) {
            *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                "results store {}: {e}; going on without it",
                self.path.display()
            ));
        }
    }

    fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        if self.broken.load(Ordering::Relaxed) {
            return None;
        }
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        match f(&conn) {
            Ok(v) => Some(v),
            Err(e) => {
                drop(conn);
                self.fail(e);
                None
            }
        }
    }

    /// This model's outcome for the file at `key`, if the file is unchanged since it was stored.
    pub fn by_file(&self, key: &FileKey) -> Option<Hit> {
        self.by_files(std::slice::from_ref(key)).pop().flatten()
    }

    /// [`Store::by_file`] for many files at once, in two statements: one over an array of
    /// paths, answered from each file's row where it holds this model's outcome (the rows of a
    /// folder lie together: a page read per dozen files), then one over an array of content
    /// hashes for the rest (another model's copy, none, or one this version cannot use).
    /// Reopening a folder of a million stored results looks them up a batch at a time. The
    /// answer has one place per key, in order.
    pub fn by_files(&self, keys: &[FileKey]) -> Vec<Option<Hit>> {
        let mut hits: Vec<Option<Hit>> = keys.iter().map(|_| None).collect();
        if keys.is_empty() {
            return hits;
        }
        // The keys by path, to find a row's keys (a path may be asked for twice).
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by(|&a, &b| keys[a].path.cmp(&keys[b].path));
        let paths: Array = Rc::new(
            order
                .iter()
                .map(|&i| Value::Blob(keys[i].path.clone()))
                .collect(),
        );
        // The keys whose row had no usable copy, with their content hash; one key of each row
        // with no copy at all (a store from before schema 6), to be filled.
        let mut rest: Vec<([u8; 16], usize)> = Vec::new();
        let mut empty: Vec<usize> = Vec::new();
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT f.path, f.size, f.mtime_ns, f.hash, f.model = ?2, f.status, f.error,
                     f.info, f.probs, f.dhash, f.version, f.unusual, f.border
                 FROM rarray(?1) a JOIN files f ON f.path = a.value",
            )?;
            let mut rows = stmt.query(params![paths, self.model])?;
            let mut at = 0;
            while let Some(r) = rows.next()? {
                let path = r.get_ref(0)?.as_blob()?;
                let (size, mtime_ns): (i64, i64) = (r.get(1)?, r.get(2)?);
                // The rows come in the array's order as a rule: look where the last one ended
                // first.
                let start = if order.get(at).is_some_and(|&i| keys[i].path == path) {
                    at
                } else {
                    order.partition_point(|&i| keys[i].path.as_slice() < path)
                };
                let end = start + order[start..].partition_point(|&i| keys[i].path == path);
                at = end;
                let mut same = order[start..end]
                    .iter()
                    .copied()
                    .filter(|&i| keys[i].size as i64 == size && keys[i].mtime_ns == mtime_ns)
                    .peekable();
                let hash = r.get_ref(3)?.as_blob().ok();
                let (Some(hash), Some(&first)) =
                    (hash.and_then(|h| h.try_into().ok()), same.peek())
                else {
                    continue;
                };
                let ours = r.get_ref(4)?.as_i64_or_null().ok().flatten();
                if ours.is_none() {
                    empty.push(first);
                }
                match (ours == Some(1))
                    .then(|| raw_row(r, 5).and_then(outcome_from))
                    .flatten()
                {
                    Some((outcome, dhash)) => give(&mut hits, same, hash, outcome, dhash),
                    None => rest.extend(same.map(|i| (hash, i))),
                }
            }
            if rest.is_empty() {
                return Ok(());
            }
            rest.sort_unstable();
            let mut hashes: Vec<Value> =
                rest.iter().map(|(h, _)| Value::Blob(h.to_vec())).collect();
            hashes.dedup();
            let mut stmt = c.prepare_cached(
                "SELECT r.hash, r.status, r.error, r.info, r.probs, r.dhash, r.version, r.unusual,
                     r.border
                 FROM rarray(?1) a JOIN results r ON r.model = ?2 AND r.hash = a.value",
            )?;
            let mut rows = stmt.query(params![Rc::new(hashes), self.model])?;
            while let Some(r) = rows.next()? {
                let hash = r.get_ref(0)?.as_blob().ok();
                let Some(hash) = hash.and_then(|h| <[u8; 16]>::try_from(h).ok()) else {
                    continue;
                };
                let Some((outcome, dhash)) = raw_row(r, 1).and_then(outcome_from) else {
                    continue;
                };
                let start = rest.partition_point(|(h, _)| *h < hash);
                let end = start + rest[start..].partition_point(|(h, _)| *h == hash);
                give(
                    &mut hits,
                    rest[start..end].iter().map(|&(_, i)| i),
                    hash,
                    outcome,
                    dhash,
                );
            }
            let found: Vec<Value> = empty
                .iter()
                .filter(|&&i| hits[i].is_some())
                .map(|&i| Value::Blob(keys[i].path.clone()))
                .collect();
            if found.len() >= FILL_AT_LEAST {
                fill_copies(c, Rc::new(found), &self.model);
            }
            Ok(())
        });
        hits
    }

    /// This model's outcome for a file with these bytes, wherever it was seen.
    pub fn by_hash(&self, hash: u128) -> Option<Hit> {
        let raw = self.with_conn(|c| {
            c.prepare_cached(
                "SELECT status, error, info, probs, dhash, version, unusual, border FROM results
                 WHERE model = ?1 AND hash = ?2",
            )?
            .query_row(params![self.model, hash.to_le_bytes().to_vec()], |r| {
                Ok(raw_row(r, 0).and_then(outcome_from))
            })
            .optional()
        })???;
        let (outcome, dhash) = raw;
        Some(Hit {
            hash,
            outcome,
            dhash,
        })
    }

    /// Remember that the file at `key` has content `hash`, whose `outcome` is stored already
    /// (found by [`Store::by_hash`]): the file's row gets its copy, `results` is left alone.
    pub fn record_file(&self, key: FileKey, hash: u128, outcome: &Outcome, dhash: Option<DHash>) {
        self.enqueue(Pending {
            key,
            hash,
            outcome: (outcome.without_phi(), dhash),
            new_result: false,
        });
    }

    /// Store an outcome (written with the next batch), without its PHI.
    pub fn put(&self, key: FileKey, hash: u128, outcome: &Outcome, dhash: Option<DHash>) {
        self.enqueue(Pending {
            key,
            hash,
            outcome: (outcome.without_phi(), dhash),
            new_result: true,
        });
    }

    fn enqueue(&self, p: Pending) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let due = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.items.push(p);
            let last = *q.last_flush.get_or_insert_with(Instant::now);
            q.items.len() >= BATCH || last.elapsed() >= FLUSH_EVERY
        };
        if due {
            self.flush();
        }
    }

    /// Write what is queued, in one transaction.
    pub fn flush(&self) {
        let items = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.last_flush = Some(Instant::now());
            std::mem::take(&mut q.items)
        };
        if items.is_empty() {
            return;
        }
        let created = now_secs();
        self.with_conn(|c| {
            // IMMEDIATE: take the write lock first, so a writer beside us makes this one wait
            // (busy timeout) instead of failing when a read lock would need upgrading.
            let tx = rusqlite::Transaction::new_unchecked(c, rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut file = tx.prepare_cached(&format!(
                    "INSERT INTO files ({FILE_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT (path) DO UPDATE SET size = ?2, mtime_ns = ?3, hash = ?4,
                         seen = ?5, model = ?6, status = ?7, error = ?8, info = ?9, probs = ?10,
                         dhash = ?11, version = ?12, unusual = ?13, border = ?14"
                ))?;
                let mut result = tx.prepare_cached(
                    "INSERT OR REPLACE INTO results
                     (model, hash, status, error, info, probs, dhash, version, created, unusual, border)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?;
                for p in &items {
                    let hash = p.hash.to_le_bytes().to_vec();
                    let (outcome, dhash) = &p.outcome;
                    let (status, error, info, probs, unusual, border) = status_of(outcome);
                    let info = info.map(|i| serde_json::to_string(i).expect("info serialises"));
                    let (probs, dhash) = (probs.map(f32s_to_blob), dhash.as_ref().map(dhash_to_blob));
                    let version = env!("CARGO_PKG_VERSION");
                    let (unusual, border) = (unusual.map(f64::from), border.map(f64::from));
                    file.execute(params![
                        p.key.path,
                        p.key.size as i64,
                        p.key.mtime_ns,
                        hash,
                        created,
                        self.model,
                        status,
                        error,
                        info,
                        probs,
                        dhash,
                        version,
                        unusual,
                        border
                    ])?;
                    if p.new_result {
                        result.execute(params![
                            self.model, hash, status, error, info, probs, dhash, version, created,
                            unusual, border
                        ])?;
                    }
                }
            }
            tx.commit()
        });
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What `cache info` prints.
#[derive(Debug)]
pub struct StoreStats {
    pub files: i64,
    pub results: i64,
    pub models: Vec<(String, i64)>,
    pub bytes: u64,
}

/// Counts of what the store at `path` holds.
pub fn stats(path: &Path) -> Result<StoreStats, StoreError> {
    let sql = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let conn = open_connection(path)?;
    let count = |q: &str| conn.query_row(q, [], |r| r.get::<_, i64>(0)).map_err(sql);
    let files = count("SELECT count(*) FROM files")?;
    let results = count("SELECT count(*) FROM results")?;
    let mut stmt = conn
        .prepare("SELECT model, count(*) FROM results GROUP BY model ORDER BY model")
        .map_err(sql)?;
    let models = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sql)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql)?;
    let bytes = ["", "-wal", "-shm"]
        .iter()
        .filter_map(|s| {
            let mut p = path.as_os_str().to_owned();
            p.push(s);
            std::fs::metadata(PathBuf::from(p)).ok()
        })
        .map(|m| m.len())
        .sum();
    Ok(StoreStats {
        files,
        results,
        models,
        bytes,
    })
}

/// What [`import`] added.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Results the store did not have yet (same model, same file content: the same result).
    pub results: usize,
    /// File records that were new or newer than the store's own.
    pub files: usize,
}

/// Copy the results and file records of the store at `from` (only read) into the store at
/// `into` (created when needed). Results already there stay; a file record replaces an older
/// one for the same path.
pub fn import(into: &Path, from: &Path) -> Result<Imported, StoreError> {
    let src_err = |source| StoreError::Sqlite {
        path: from.to_path_buf(),
        source,
    };
    if let (Ok(a), Ok(b)) = (into.canonicalize(), from.canonicalize())
        && a == b
    {
        return Err(StoreError::SameStore(from.to_path_buf()));
    }
    let src = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(src_err)?;
    src.busy_timeout(BUSY_TIMEOUT).map_err(src_err)?;
    let found: i64 = src
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(src_err)?;
    if found != SCHEMA_VERSION {
        return Err(StoreError::OtherSchema {
            path: from.to_path_buf(),
            found,
        });
    }
    create_private(into)?;
    let mut conn = open_connection(into)?;
    let dst_err = |source| StoreError::Sqlite {
        path: into.to_path_buf(),
        source,
    };
    let tx = conn.transaction().map_err(dst_err)?;
    // Each row of `select` on the source goes through `insert` (same columns) on the store;
    // returns the rows the store took.
    let copy = |select: &str, insert: &str| -> Result<usize, StoreError> {
        let mut read = src.prepare(select).map_err(src_err)?;
        let columns = read.column_count();
        let mut write = tx.prepare(insert).map_err(dst_err)?;
        let mut rows = read.query([]).map_err(src_err)?;
        let mut taken = 0;
        while let Some(r) = rows.next().map_err(src_err)? {
            let values: Vec<rusqlite::types::Value> = (0..columns)
                .map(|i| r.get(i))
                .collect::<Result<_, _>>()
                .map_err(src_err)?;
            taken += write
                .execute(rusqlite::params_from_iter(values))
                .map_err(dst_err)?;
        }
        Ok(taken)
    };
    let files = copy(
        &format!("SELECT {FILE_COLUMNS} FROM files"),
        &format!(
            "INSERT INTO files ({FILE_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT (path) DO UPDATE SET (size, mtime_ns, hash, seen, {COPY_COLUMNS}) = (
                 excluded.size, excluded.mtime_ns, excluded.hash, excluded.seen,
                 excluded.model, excluded.status, excluded.error, excluded.info, excluded.probs,
                 excluded.dhash, excluded.version, excluded.unusual, excluded.border)
             WHERE excluded.seen > files.seen"
        ),
    )?;
    let results = copy(
        &format!("SELECT {RESULT_COLUMNS} FROM results"),
        &format!(
            "INSERT OR IGNORE INTO results ({RESULT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ),
    )?;
    let added = Imported { results, files };
    tx.commit().map_err(dst_err)?;
    Ok(added)
}

/// Delete the store at `path` (and its WAL files); returns whether there was one.
pub fn clear(path: &Path) -> std::io::Result<bool> {
    let mut any = false;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(PathBuf::from(p)) {
            Ok(()) => any = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several processes starting on one new store at once: SQLite answers "database is locked"
    /// at once (without waiting for the busy timeout) to a connection that switches to WAL or
    /// creates the schema while another one does the same. Every opener must get the store.
    #[test]
    fn many_openers_of_one_new_store_all_get_it() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("store.sqlite3");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        Store::open(&path, "m").map(|_| ())
                    })
                })
                .collect();
            for h in handles {
                if let Err(e) = h.join().unwrap() {
                    panic!("round {round}: {e}");
                }
            }
        }
    }
}
