//! Finding the images in a folder: a streaming, naturally sorted, recursive walk.

pub mod dataset;
mod natural;
pub mod shard;

pub use natural::{natural_cmp, path_cmp};

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::imaging::{Format, Limits, sniff};

/// File extensions taken as images without looking inside (lower case).
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm", "dicom", "dic",
];

/// One file the walk found, or one place it could not read.
///
/// Kept small (a million of them sit in the UI's list): the path relative to the root is the
/// tail of `path`, not a second copy, and the class-folder label is shared by every entry of
/// its folder.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Path as found (root joined with the relative path).
    pub path: PathBuf,
    /// Where the path relative to the walked root starts in `path`: 0 or just after a separator.
    rel_start: u32,
    /// Name of the first folder below the root, when the entry sits in one (class folders), or
    /// the label a data set gives the file.
    pub folder_label: Option<Arc<str>>,
    /// Set when the walk itself failed here (permission denied, symlink loop).
    pub walk_error: Option<Box<str>>,
}

/// Where `tail` starts in `path` when it is `path`'s end after a separator (or all of it).
fn tail_start(path: &Path, tail: &Path) -> Option<usize> {
    let (p, t) = (
        path.as_os_str().as_encoded_bytes(),
        tail.as_os_str().as_encoded_bytes(),
    );
    let start = p.len().checked_sub(t.len())?;
    let boundary = start == 0 || std::path::is_separator(char::from(p[start - 1]));
    (p.ends_with(t) && boundary && u32::try_from(start).is_ok()).then_some(start)
}

impl Entry {
    /// `path`, found under `root`; the first folder below the root is its folder label.
    pub fn new(root: &Path, path: PathBuf) -> Entry {
        let mut entry = Entry::under(root, path);
        entry.folder_label = entry.folder().map(|f| f.into());
        entry
    }

    /// `path`, found under `root`, without a label.
    fn under(root: &Path, path: PathBuf) -> Entry {
        let rel = match path.strip_prefix(root) {
            Ok(rel) if !rel.as_os_str().is_empty() => Some(rel),
            Ok(_) => path.file_name().map(Path::new),
            Err(_) => None,
        };
        let rel_start = rel.and_then(|rel| tail_start(&path, rel)).unwrap_or(0);
        Entry {
            rel_start: rel_start as u32,
            path,
            folder_label: None,
            walk_error: None,
        }
    }

    /// The first folder below the root, when the entry sits in one.
    fn folder(&self) -> Option<std::borrow::Cow<'_, str>> {
        let mut parts = self.rel().components();
        match (parts.next(), parts.next()) {
            (Some(dir), Some(_)) => Some(dir.as_os_str().to_string_lossy()),
            _ => None,
        }
    }

    /// One file on its own: its relative path is its name.
    pub fn file(path: PathBuf) -> Entry {
        let name = path.file_name().map(Path::new);
        let rel_start = name.and_then(|n| tail_start(&path, n)).unwrap_or(0);
        Entry {
            rel_start: rel_start as u32,
            path,
            folder_label: None,
            walk_error: None,
        }
    }

    /// The same entry with another label (a data set's, not a folder's).
    pub fn with_label(mut self, label: Option<Arc<str>>) -> Entry {
        self.folder_label = label;
        self
    }

    /// The same entry, marked as a place the walk could not read.
    pub fn with_error(mut self, error: impl Into<Box<str>>) -> Entry {
        self.walk_error = Some(error.into());
        self
    }

    /// Path relative to the walked root, for display and export.
    pub fn rel(&self) -> &Path {
        let bytes = self.path.as_os_str().as_encoded_bytes();
        let tail = &bytes[self.rel_start as usize..];
        // SAFETY: `rel_start` is 0 or just after a path separator, an ASCII character: a
        // boundary at which an `OsStr` may be split (`tail_start` checked it).
        Path::new(unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(tail) })
    }
}

/// Is this a file we should try to decode? Known extensions are taken on their name; files
/// without an extension (DICOM often has none) are taken when their first bytes say image.
pub fn is_candidate(path: &Path) -> bool {
    match path.extension() {
        Some(_) => has_image_extension(path),
        None => sniff_file(path).is_some(),
    }
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|ext| IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

fn sniff_file(path: &Path) -> Option<Format> {
    let mut head = Vec::with_capacity(132);
    std::fs::File::open(path)
        .ok()?
        .take(132)
        .read_to_end(&mut head)
        .ok()?;
    sniff(&head)
}

/// How to walk.
#[derive(Clone, Debug, Default)]
pub struct WalkOptions {
    /// Follow symbolic links (loops are detected and reported, not followed forever).
    pub follow_links: bool,
    /// Include files and folders whose names start with a dot.
    pub hidden: bool,
    /// A folder with more entries than this is not read whole and sorted before its first file
    /// is yielded: it is streamed in naturally sorted chunks of this size, in no order between
    /// chunks (the UI, which sorts what it lists, sees the first files at once). `None`: every
    /// folder is read whole, so the walk's order is the natural order (`scan`, `eval`).
    pub stream_after: Option<usize>,
}

/// What a folder's listing said about one name.
#[derive(Debug)]
enum Kind {
    File,
    Dir,
    /// A link the walk does not follow (`follow_links` off): taken when it points at a file.
    Link,
    /// A FIFO, socket or device.
    Special,
    /// A file a DICOMDIR lists: an entry whatever its name, an error when it is missing.
    Listed,
}

/// One name read from a folder, or an error reading it.
type Found = Result<(OsString, Kind), String>;

/// A folder being walked: what is left of its sorted listing, and (a streamed big folder) the
/// listing not read yet.
struct Folder {
    path: PathBuf,
    /// Same-file identity, to catch a followed link back to an ancestor.
    id: Option<(u64, u64)>,
    /// Sorted names still to visit, the next last.
    pending: Vec<Found>,
    rest: Option<std::fs::ReadDir>,
}

/// The walk's state: a stack of folders, the deepest last.
struct Walk {
    root: PathBuf,
    options: WalkOptions,
    stack: Vec<Folder>,
    /// Set until the root has been looked at.
    start: bool,
    /// The folder label of the last entry, shared with the next of the same folder.
    label: Option<Arc<str>>,
}

/// Walk `root` lazily, yielding image candidates folder by folder, in natural order (`img2`
/// before `img10`) unless `stream_after` streams a big folder. A single file as `root` yields
/// just that file.
pub fn walk(root: &Path, options: &WalkOptions) -> impl Iterator<Item = Entry> + use<> {
    Walk {
        root: root.to_path_buf(),
        options: options.clone(),
        stack: Vec::new(),
        start: true,
        label: None,
    }
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn identity(_: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

impl Walk {
    /// An entry under the root, its folder label shared with the entry before when the same.
    fn entry(&mut self, path: PathBuf) -> Entry {
        let mut entry = Entry::under(&self.root, path);
        if let Some(folder) = entry.folder() {
            if self.label.as_deref() != Some(&*folder) {
                self.label = Some(folder.into());
            }
            entry.folder_label = self.label.clone();
        }
        entry
    }

    fn error(&mut self, path: PathBuf, message: &str) -> Entry {
        self.entry(path)
            .with_error(format!("cannot read: {message}"))
    }

    /// Start on a folder: read its listing (whole, or a first chunk of a big one).
    fn enter(&mut self, path: PathBuf, id: Option<(u64, u64)>) -> Option<Entry> {
        if let Some(a) = id.and_then(|id| self.stack.iter().find(|f| f.id == Some(id))) {
            let message = format!("symlink loop back to {}", a.path.display());
            return Some(self.error(path, &message));
        }
        match std::fs::read_dir(&path) {
            Ok(listing) => {
                let mut folder = Folder {
                    path,
                    id,
                    pending: Vec::new(),
                    rest: Some(listing),
                };
                read_more(&self.options, &mut folder);
                self.stack.push(folder);
                None
            }
            Err(e) => Some(self.error(path, &e.to_string())),
        }
    }

    /// What one name in the folder on top of the stack gives: an entry, a folder to enter, or
    /// nothing.
    fn visit(&mut self, found: Found) -> Option<Entry> {
        let dir = &self.stack.last()?.path;
        let (name, kind) = match found {
            Ok(f) => f,
            Err(message) => {
                let dir = dir.clone();
                return Some(self.error(dir, &message));
            }
        };
        let path = dir.join(&name);
        let kind = match kind {
            Kind::Link if self.options.follow_links => match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => return self.enter(path, identity(&meta)),
                Ok(meta) if meta.is_file() => Kind::File,
                Ok(_) => Kind::Special,
                Err(e) => return Some(self.error(path, &e.to_string())),
            },
            kind => kind,
        };
        match kind {
            Kind::Dir => {
                let id = if self.options.follow_links {
                    std::fs::metadata(&path).ok().as_ref().and_then(identity)
                } else {
                    None
                };
                self.enter(path, id)
            }
            Kind::File => is_candidate(&path).then(|| self.entry(path)),
            Kind::Link => (path.is_file() && is_candidate(&path)).then(|| self.entry(path)),
            Kind::Listed => Some(match listed(&path, dir) {
                Some(path) => self.entry(path),
                None => self.error(path, "the DICOMDIR lists it, but it is not there"),
            }),
            // A FIFO, socket or device named like an image gets its row (an error when it is
            // read); it is never opened here, where opening a FIFO would block the walk.
            Kind::Special => has_image_extension(&path).then(|| self.entry(path)),
        }
    }

    /// The root: a folder is entered, a DICOMDIR gives the images it lists, another file (or
    /// FIFO, device) is yielded as it is.
    fn begin(&mut self) -> Option<Entry> {
        let root = self.root.clone();
        match std::fs::metadata(&root) {
            Ok(meta) if meta.is_dir() => self.enter(root, identity(&meta)),
            Ok(meta) if meta.is_file() && is_dicomdir(&root) => self.index(root),
            Ok(_) => Some(Entry::file(root)),
            Err(e) => Some(self.error(root, &e.to_string())),
        }
    }

    /// A DICOMDIR as the root: its folder becomes the root, and the walk yields the images its
    /// records list, in their order. One that cannot be read is yielded as a file (its row
    /// says why).
    fn index(&mut self, dicomdir: PathBuf) -> Option<Entry> {
        let folder = match dicomdir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Ok(images) = crate::imaging::dicomdir_images(&dicomdir, &Limits::default()) else {
            return Some(Entry::file(dicomdir));
        };
        self.root = folder.clone();
        let pending = images
            .into_iter()
            .rev()
            .map(|image| image.map(|rel| (rel.into_os_string(), Kind::Listed)))
            .collect();
        self.stack.push(Folder {
            path: folder,
            id: None,
            pending,
            rest: None,
        });
        None
    }
}

/// Is this file a DICOMDIR? PS3.10 names it so (in capitals on the medium; a mounted disc may
/// show it in lower case).
fn is_dicomdir(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"))
}

/// A file a DICOMDIR in `dir` lists: as written (capitals, as ISO 9660 stores names), else in
/// lower case (how some systems mount a disc).
fn listed(path: &Path, dir: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    let rel = path.strip_prefix(dir).ok()?.to_str()?;
    let lower = dir.join(rel.to_ascii_lowercase());
    lower.is_file().then_some(lower)
}

/// Fill `pending` from the listing: all of it, or the next chunk of a streamed folder.
fn read_more(options: &WalkOptions, folder: &mut Folder) {
    let Some(listing) = folder.rest.as_mut() else {
        return;
    };
    let chunk = options.stream_after.unwrap_or(usize::MAX).max(1);
    let mut found = Vec::new();
    for item in listing.by_ref() {
        let item = item.map_err(|e| e.to_string()).and_then(|d| {
            let name = d.file_name();
            let kind = match d.file_type() {
                Ok(t) if t.is_dir() => Kind::Dir,
                Ok(t) if t.is_file() => Kind::File,
                Ok(t) if t.is_symlink() => Kind::Link,
                Ok(_) => Kind::Special,
                Err(e) => return Err(e.to_string()),
            };
            Ok((name, kind))
        });
        if let Ok((name, _)) = &item
            && !options.hidden
            && name.as_encoded_bytes().starts_with(b".")
        {
            continue;
        }
        found.push(item);
        if found.len() >= chunk {
            break;
        }
    }
    if found.len() < chunk {
        folder.rest = None;
    }
    // Sorted, then reversed: the next to visit is popped from the end.
    found.sort_by(|a, b| match (a, b) {
        (Ok((a, _)), Ok((b, _))) => natural_cmp(&b.to_string_lossy(), &a.to_string_lossy()),
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Err(_)) => std::cmp::Ordering::Equal,
    });
    folder.pending = found;
}

impl Iterator for Walk {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        if std::mem::take(&mut self.start)
            && let Some(entry) = self.begin()
        {
            return Some(entry);
        }
        loop {
            let top = self.stack.last_mut()?;
            let Some(found) = top.pending.pop() else {
                if top.rest.is_some() {
                    read_more(&self.options, top);
                } else {
                    self.stack.pop();
                }
                continue;
            };
            if let Some(entry) = self.visit(found) {
                return Some(entry);
            }
        }
    }
}

/// Is `path` (which may not exist yet) inside `root`?
pub fn is_inside(path: &Path, root: &Path) -> bool {
    let Ok(root) = root.canonicalize() else {
        return false;
    };
    let root = if root.is_file() {
        root.parent().map(Path::to_path_buf).unwrap_or(root)
    } else {
        root
    };
    // Resolve the longest existing ancestor, then add the rest back.
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let Ok(mut resolved) = existing.canonicalize() else {
        return false;
    };
    resolved.extend(rest.iter().rev());
    resolved.starts_with(&root)
}
