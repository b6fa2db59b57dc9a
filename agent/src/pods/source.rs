//! Static pod sources: a manifest directory or file (`--pod-manifest-path`), noticed at once
//! through inotify with a periodic full rescan as backstop, and a manifest URL
//! (`--manifest-url`) polled every `httpCheckFrequency`.
//!
//! Each source sends a full [`PodUpdate::Snapshot`] whenever its pods or errors changed
//! (and once at start). A malformed manifest yields a [`ManifestError`] for that file only.
//!
//! A source that cannot be read says nothing about its pods, so it sends nothing: the
//! manager keeps what it has (and, before a first snapshot, cleans up no orphans), the
//! source logs the failure (at once, then every [`OUTAGE_LOG_EVERY`] while it lasts) and
//! picks up again when it can read. For the file source that is a manifest directory that
//! cannot be listed (gone after it was seen, EMFILE, EACCES, EIO...); a file that cannot be
//! read (an I/O error, not its content) keeps the pod it last yielded. A path that never
//! existed, or a single manifest file removed from its directory, means no pods, as upstream.
//! For the URL source it is a failed fetch, or a body that cannot be parsed as a whole (too
//! large, not YAML/JSON, too deep), as upstream's HTTP source.
//!
//! Manifest files are opened without blocking and refused unless they are regular files
//! (a FIFO would block the reader), read up to [`MAX_MANIFEST_BYTES`], and parsed off the
//! async threads, as are `--manifest-url` bodies (read up to the same limit).
//!
//! Two manifests of one source with the same UID, or the same namespace/name, are a
//! conflict: the pod that was already running keeps it (else the first in file order), the
//! other manifest is refused with an error naming both.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use inotify::{Inotify, WatchMask};
use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::manifest::{
    FetchError, MAX_MANIFEST_BYTES, ManifestError, ManifestOrigin, StaticPod, parse_pod_manifest,
    parse_url_manifest,
};
use crate::model::CONFIG_SEEN_ANNOTATION;

/// How often a source that stays unreadable is logged again.
pub const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Which source a snapshot comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    /// `--pod-manifest-path` / `staticPodPath`.
    File,
    /// `--manifest-url` / `staticPodURL`.
    Http,
    /// The API server (`--kubeconfig`): the pods bound to this node.
    Api,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::File => "file",
            Self::Http => "http",
            Self::Api => "api",
        })
    }
}

/// What a source sends whenever its set of pods or errors changed.
#[derive(Debug)]
pub enum PodUpdate {
    /// Everything the source currently defines: pods absent here are gone.
    Snapshot {
        source: SourceKind,
        pods: Vec<StaticPod>,
        errors: Vec<ManifestError>,
    },
}

/// Quiet time that ends a burst of inotify events while a file is still being written.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Manifests a writer has created or modified and not yet closed, from inotify events: while
/// there are any, a rescan waits for quiet (a half-written file would read as malformed);
/// with none (a file renamed into place, or written and closed) it runs at once.
#[derive(Debug, Default)]
struct OpenWrites(std::collections::HashSet<std::ffi::OsString>);

impl OpenWrites {
    fn note(&mut self, mask: inotify::EventMask, name: Option<&std::ffi::OsStr>) {
        use inotify::EventMask;
        // Hidden files (editors' swap files) are not manifests.
        let Some(name) = name.filter(|n| !n.to_string_lossy().starts_with('.')) else {
            return;
        };
        if mask.intersects(EventMask::CLOSE_WRITE | EventMask::DELETE | EventMask::MOVED_FROM) {
            self.0.remove(name);
        } else if mask.intersects(EventMask::CREATE | EventMask::MODIFY) {
            self.0.insert(name.to_owned());
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the source sent last, to send only changes.
#[derive(Default)]
struct Last {
    sent: Option<(Vec<StaticPod>, Vec<String>)>,
}

impl Last {
    /// Whether (pods, errors) differ from what was sent; remembers them if so.
    fn changed(&mut self, pods: &[StaticPod], errors: &[ManifestError]) -> bool {
        let current = (pods.to_vec(), errors.iter().map(error_text).collect());
        if self.sent.as_ref() == Some(&current) {
            return false;
        }
        self.sent = Some(current);
        true
    }

    /// Sends a snapshot of `source` if it differs from the last one sent. `Err` when the
    /// receiver is gone.
    async fn send_if_changed(
        &mut self,
        tx: &mpsc::Sender<PodUpdate>,
        source: SourceKind,
        pods: Vec<StaticPod>,
        errors: Vec<ManifestError>,
    ) -> Result<(), mpsc::error::SendError<PodUpdate>> {
        if !self.changed(&pods, &errors) {
            return Ok(());
        }
        tx.send(PodUpdate::Snapshot {
            source,
            pods,
            errors,
        })
        .await
    }
}

fn error_text(e: &ManifestError) -> String {
    e.full_text()
}

/// A source that cannot be read: when to log it (at once, then every
/// [`OUTAGE_LOG_EVERY`]) and how long it lasted.
#[derive(Debug, Default)]
struct Outage {
    since: Option<tokio::time::Instant>,
    logged: Option<tokio::time::Instant>,
}

impl Outage {
    /// Notes a failure at `now`; true when it should be logged.
    fn failed(&mut self, now: tokio::time::Instant) -> bool {
        self.since.get_or_insert(now);
        let due = self
            .logged
            .is_none_or(|at| now.duration_since(at) >= OUTAGE_LOG_EVERY);
        if due {
            self.logged = Some(now);
        }
        due
    }

    /// Notes a success; how long the outage it ends lasted, if there was one.
    fn recovered(&mut self, now: tokio::time::Instant) -> Option<Duration> {
        self.logged = None;
        self.since.take().map(|since| now.duration_since(since))
    }
}

/// Keeps `kubernetes.io/config.seen` at the time a UID was first seen, so rescans of an
/// unchanged manifest produce identical pods.
#[derive(Default)]
struct SeenTimes(HashMap<String, Timestamp>);

impl SeenTimes {
    fn stamp(&mut self, pods: &mut [StaticPod], now: Timestamp) {
        for sp in pods.iter_mut() {
            let seen = *self.0.entry(sp.uid.clone()).or_insert(now);
            if let Some(annotations) = sp.pod.metadata.annotations.as_mut() {
                annotations.insert(CONFIG_SEEN_ANNOTATION.to_owned(), seen.to_string());
            }
        }
        let live: BTreeSet<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
        self.0.retain(|uid, _| live.contains(uid.as_str()));
    }
}

/// Keeps one pod per UID and per namespace/name; refuses the others with an error naming
/// both manifests. The pods `previous` held (what the source sent last, by origin) keep
/// their claim; among the rest the first in order wins (upstream keeps the first).
pub(crate) fn dedupe(
    pods: Vec<StaticPod>,
    previous: &HashMap<ManifestOrigin, String>,
    errors: &mut Vec<ManifestError>,
) -> Vec<StaticPod> {
    let key = |sp: &StaticPod| {
        (
            sp.pod.metadata.namespace.clone().unwrap_or_default(),
            sp.pod.metadata.name.clone().unwrap_or_default(),
        )
    };
    let held = |sp: &StaticPod| previous.get(&sp.origin) == Some(&sp.uid);
    let mut by_uid: HashMap<String, ManifestOrigin> = HashMap::new();
    let mut by_name: HashMap<(String, String), ManifestOrigin> = HashMap::new();
    let mut keep = vec![false; pods.len()];
    // Pods already running claim first, then the rest in order.
    let order = (0..pods.len())
        .filter(|&i| held(&pods[i]))
        .chain((0..pods.len()).filter(|&i| !held(&pods[i])));
    for i in order.collect::<Vec<_>>() {
        let sp = &pods[i];
        let name = key(sp);
        if let Some(first) = by_uid.get(&sp.uid) {
            errors.push(ManifestError::DuplicateUid {
                origin: sp.origin.clone(),
                uid: sp.uid.clone(),
                other: first.clone(),
            });
        } else if let Some(first) = by_name.get(&name) {
            errors.push(ManifestError::Duplicate {
                origin: sp.origin.clone(),
                namespace: name.0,
                name: name.1,
                other: first.clone(),
            });
        } else {
            by_uid.insert(sp.uid.clone(), sp.origin.clone());
            by_name.insert(name, sp.origin.clone());
            keep[i] = true;
        }
    }
    pods.into_iter()
        .zip(keep)
        .filter_map(|(sp, keep)| keep.then_some(sp))
        .collect()
}

/// What a source sent last, by origin, for [`dedupe`].
fn origins(pods: &[StaticPod]) -> HashMap<ManifestOrigin, String> {
    pods.iter()
        .map(|sp| (sp.origin.clone(), sp.uid.clone()))
        .collect()
}

/// What a file source's look at its path found.
#[derive(Debug)]
pub enum Scan {
    /// Every manifest there, read: the pods, and the errors of the files that gave none
    /// (or kept their last pod, for a file that could not be read).
    Complete {
        pods: Vec<StaticPod>,
        errors: Vec<ManifestError>,
    },
    /// Nothing to compare with the last scan: nothing sent.
    Unchanged,
    /// The path could not be listed: its pods are unknown.
    Unavailable(ManifestError),
}

/// The `--pod-manifest-path` source.
pub struct FileSource {
    path: PathBuf,
    node_name: String,
    rescan_period: Duration,
    inotify: bool,
    seen: SeenTimes,
    /// The last parse of each file, with the bytes it came from and the file's stat: a
    /// rescan reads only files whose stat changed and parses only those whose content
    /// changed (YAML parsing, then reading, dominated an idle agent's profile).
    parsed: HashMap<PathBuf, Parsed>,
    /// Whether the last scan found a file it could not use (or there was none yet).
    must_rescan: bool,
    /// The path was once listed as a directory: if it goes, its pods are unknown, not gone.
    was_dir: bool,
    /// The pods of the last complete scan, by origin, for [`dedupe`].
    sent: HashMap<ManifestOrigin, String>,
}

/// The manifest files found, sorted, each with its stat, the entries whose stat failed
/// (they keep the pod they last gave), and the entries refused (their errors included).
struct Listing {
    files: Vec<(PathBuf, FileStat)>,
    unreadable: Vec<PathBuf>,
    errors: Vec<ManifestError>,
}

struct Parsed {
    stat: FileStat,
    /// The stat was [settled](FileStat::settled) when taken: it alone says the file is
    /// unchanged.
    settled: bool,
    bytes: Vec<u8>,
    pod: StaticPod,
}

/// What a write to a file changes: its inode (a replace by rename), size, mtime and ctime
/// (any write or metadata change moves ctime, which user space cannot set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStat {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// Timestamps advance by a clock tick (a few ms on many filesystems), so two writes of the
/// same size within one tick leave the same stat. A stat is trusted only once its ctime is
/// this far in the past when taken; until then the file is read (as git does with racily
/// clean index entries).
const STAT_SETTLE: Duration = Duration::from_secs(2);

impl FileStat {
    /// Whether a file that still has this stat has not changed since it was taken at `now`.
    fn settled(&self, now: Timestamp) -> bool {
        let settle = jiff::SignedDuration::try_from(STAT_SETTLE).unwrap_or_default();
        i32::try_from(self.ctime.1)
            .ok()
            .and_then(|ns| Timestamp::new(self.ctime.0, ns).ok())
            .is_some_and(|ctime| ctime + settle <= now)
    }

    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

impl FileSource {
    /// `path` is a directory of manifests or a single manifest file.
    #[must_use]
    pub fn new(path: PathBuf, node_name: String, rescan_period: Duration) -> Self {
        Self {
            path,
            node_name,
            rescan_period,
            inotify: true,
            seen: SeenTimes::default(),
            parsed: HashMap::new(),
            must_rescan: true,
            was_dir: false,
            sent: HashMap::new(),
        }
    }

    /// Turns inotify off (filesystems without it, or tests of the rescan backstop).
    #[must_use]
    pub fn with_inotify(mut self, enabled: bool) -> Self {
        self.inotify = enabled;
        self
    }

    /// Reads every manifest now: the pods and the errors of the files that did not parse.
    ///
    /// # Errors
    /// The path could not be listed: its pods are unknown.
    pub fn scan(
        &mut self,
        now: Timestamp,
    ) -> Result<(Vec<StaticPod>, Vec<ManifestError>), ManifestError> {
        let listing = self.list()?;
        Ok(self.scan_listing(listing, now))
    }

    /// One look at the path: a listing and, when it differs from the last scan, a scan.
    /// Blocking (directory reads, file reads, parsing): run off the async threads.
    pub fn step(&mut self, now: Timestamp) -> Scan {
        match self.list() {
            Err(e) => {
                self.must_rescan = true;
                Scan::Unavailable(e)
            }
            Ok(listing) if self.unchanged(&listing) => Scan::Unchanged,
            Ok(listing) => {
                let (pods, errors) = self.scan_listing(listing, now);
                Scan::Complete { pods, errors }
            }
        }
    }

    /// [`FileSource::scan`] of the files `listing` found.
    fn scan_listing(
        &mut self,
        listing: Listing,
        now: Timestamp,
    ) -> (Vec<StaticPod>, Vec<ManifestError>) {
        let Listing {
            files,
            unreadable,
            mut errors,
        } = listing;
        let mut pods = Vec::new();
        self.parsed.retain(|path, _| {
            files.binary_search_by(|(f, _)| f.cmp(path)).is_ok() || unreadable.contains(path)
        });
        // An entry that could not be stat'ed says nothing about its content.
        pods.extend(
            unreadable
                .iter()
                .filter_map(|path| self.parsed.get(path).map(|p| p.pod.clone())),
        );
        for (file, stat) in files {
            if let Some(p) = self.parsed.get(&file)
                && p.settled
                && stat == p.stat
            {
                pods.push(p.pod.clone());
                continue;
            }
            let origin = ManifestOrigin::File(file.clone());
            let data = match read_manifest(&file, &origin) {
                Ok(Some(data)) => data,
                Ok(None) => {
                    // Removed since the listing.
                    self.parsed.remove(&file);
                    continue;
                }
                Err(e @ ManifestError::Read { .. }) => {
                    // Says nothing about the content: the pod it last gave stays.
                    if let Some(p) = self.parsed.get(&file) {
                        pods.push(p.pod.clone());
                    }
                    errors.push(e);
                    continue;
                }
                Err(e) => {
                    self.parsed.remove(&file);
                    errors.push(e);
                    continue;
                }
            };
            if let Some(p) = self.parsed.get_mut(&file)
                && p.bytes == data
            {
                // Touched, not changed.
                p.stat = stat;
                p.settled = stat.settled(now);
                pods.push(p.pod.clone());
                continue;
            }
            match parse_pod_manifest(&data, &origin, &self.node_name, now) {
                Ok(pod) => {
                    let parsed = Parsed {
                        stat,
                        settled: stat.settled(now),
                        bytes: data,
                        pod: pod.clone(),
                    };
                    self.parsed.insert(file, parsed);
                    pods.push(pod);
                }
                Err(e) => {
                    self.parsed.remove(&file);
                    errors.push(e);
                }
            }
        }
        let mut pods = dedupe(pods, &self.sent, &mut errors);
        self.must_rescan = !errors.is_empty();
        self.seen.stamp(&mut pods, now);
        self.sent = origins(&pods);
        (pods, errors)
    }

    /// Whether a scan of `listing` would find what the last scan found: it found every file
    /// usable, and the same files are there with the same stat. No reads, parses or copies.
    fn unchanged(&self, listing: &Listing) -> bool {
        !self.must_rescan
            && listing.errors.is_empty()
            && listing.files.len() == self.parsed.len()
            && listing.files.iter().all(|(f, stat)| {
                self.parsed
                    .get(f)
                    .is_some_and(|p| p.settled && *stat == p.stat)
            })
    }

    /// The manifest files now, sorted, with their stat (one `stat` each): the path itself,
    /// or the directory's visible entries (directories in it are skipped; other entries
    /// that are not regular files are refused by name).
    ///
    /// # Errors
    /// The path cannot be listed in full: what it holds is unknown. A path that does not
    /// exist lists as empty while it has never been a directory, or when it names a file
    /// whose directory is there (the file was removed).
    fn list(&mut self) -> Result<Listing, ManifestError> {
        let origin = ManifestOrigin::File(self.path.clone());
        let unavailable = |source| ManifestError::Read {
            origin: origin.clone(),
            source,
        };
        let mut errors = Vec::new();
        let metadata = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.was_dir => {
                let parent = self.path.parent().filter(|p| !p.as_os_str().is_empty());
                return match parent.map(std::fs::metadata) {
                    Some(Err(e)) => Err(unavailable(e)),
                    _ => Ok(Listing {
                        files: Vec::new(),
                        unreadable: Vec::new(),
                        errors,
                    }),
                };
            }
            Err(e) => return Err(unavailable(e)),
        };
        if !metadata.is_dir() {
            if let Some(kind) = not_regular(&metadata.file_type()) {
                errors.push(ManifestError::NotRegular { origin, kind });
                return Ok(Listing {
                    files: Vec::new(),
                    unreadable: Vec::new(),
                    errors,
                });
            }
            return Ok(Listing {
                files: vec![(self.path.clone(), FileStat::of(&metadata))],
                unreadable: Vec::new(),
                errors,
            });
        }
        self.was_dir = true;
        let mut files = Vec::new();
        let mut unreadable = Vec::new();
        for entry in std::fs::read_dir(&self.path).map_err(unavailable)? {
            let entry = entry.map_err(unavailable)?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            // Follows symlinks, as reading the file does.
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => files.push((path, FileStat::of(&m))),
                Ok(m) if m.is_dir() => {}
                Ok(m) => errors.push(ManifestError::NotRegular {
                    origin: ManifestOrigin::File(path),
                    kind: not_regular(&m.file_type()).unwrap_or("unknown"),
                }),
                // Removed since the directory was read, or a dangling symlink.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    unreadable.push(path.clone());
                    errors.push(ManifestError::Read {
                        origin: ManifestOrigin::File(path),
                        source,
                    });
                }
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        unreadable.sort();
        Ok(Listing {
            files,
            unreadable,
            errors,
        })
    }

    /// The directory to watch: the path itself, or a single file's parent (so an editor's
    /// replace-by-rename is seen too).
    fn watch_dir(&self) -> &Path {
        if self.path.is_dir() {
            &self.path
        } else {
            self.path.parent().unwrap_or(&self.path)
        }
    }

    fn watch(&self) -> Option<inotify::EventStream<Vec<u8>>> {
        if !self.inotify {
            return None;
        }
        let mask = WatchMask::CREATE
            | WatchMask::MODIFY
            | WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF;
        let dir = self.watch_dir();
        let result = Inotify::init().and_then(|inotify| {
            inotify.watches().add(dir, mask)?;
            inotify.into_event_stream(vec![0; 4096])
        });
        match result {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "cannot watch static pod path; relying on rescans");
                None
            }
        }
    }

    /// Sends a snapshot at start and whenever something changed, until `cancel`.
    pub async fn run(self, tx: mpsc::Sender<PodUpdate>, cancel: CancellationToken) {
        let mut source = self;
        let mut last = Last::default();
        let mut outage = Outage::default();
        let mut watched = source.watch_dir().to_owned();
        let mut events = source.watch();
        // The first scan is the loop's own; rescans follow one period later.
        let mut rescan = tokio::time::interval_at(
            tokio::time::Instant::now() + source.rescan_period,
            source.rescan_period,
        );
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Reading and parsing block (a slow filesystem, a large manifest): off the
            // async threads, so health, signals and other sources are served meanwhile.
            let task = tokio::task::spawn_blocking(move || {
                let scan = source.step(Timestamp::now());
                (source, scan)
            });
            let scan;
            (source, scan) = tokio::select! {
                () = cancel.cancelled() => return,
                joined = task => match joined {
                    Ok(done) => done,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                },
            };
            match scan {
                Scan::Unchanged => {}
                Scan::Complete { pods, errors } => {
                    if let Some(lasted) = outage.recovered(tokio::time::Instant::now()) {
                        tracing::info!(path = %source.path.display(), after = ?lasted, "static pod path readable again");
                    }
                    let sent = last.send_if_changed(&tx, SourceKind::File, pods, errors);
                    if sent.await.is_err() {
                        return;
                    }
                }
                Scan::Unavailable(e) => {
                    if outage.failed(tokio::time::Instant::now()) {
                        tracing::warn!(path = %source.path.display(), error = %e.full_text(), "cannot read the static pod path; keeping its pods");
                    }
                }
            }
            // A directory that reappeared (or replaced a file) is watched anew.
            if source.inotify && (events.is_none() || watched != source.watch_dir()) {
                watched = source.watch_dir().to_owned();
                events = source.watch();
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = rescan.tick() => {}
                event = next_event(&mut events) => {
                    if let Some(Ok(first)) = event {
                        // Take every event already queued; while a file is still being
                        // written, wait for quiet, so a half-written file is not reported
                        // as malformed.
                        let mut writes = OpenWrites::default();
                        writes.note(first.mask, first.name.as_deref());
                        loop {
                            let wait = if writes.is_empty() { Duration::ZERO } else { DEBOUNCE };
                            match tokio::time::timeout(wait, next_event(&mut events)).await {
                                Ok(Some(Ok(e))) => writes.note(e.mask, e.name.as_deref()),
                                Ok(_) => {
                                    events = None;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                    } else {
                        // The stream broke (or the directory went away): rewatched after
                        // the next scan.
                        events = None;
                    }
                }
            }
        }
    }
}

/// What a file type is when it is not a regular file; `None` for a regular file.
fn not_regular(t: &std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("directory")
    } else if t.is_fifo() {
        Some("FIFO")
    } else if t.is_socket() {
        Some("socket")
    } else if t.is_char_device() {
        Some("character device")
    } else if t.is_block_device() {
        Some("block device")
    } else {
        Some("unknown file type")
    }
}

/// Reads one manifest file: opened without blocking (opening a FIFO for reading would wait
/// for a writer) and without becoming a controlling terminal, refused unless the opened
/// file is a regular file (checked on the open file, so a swap after the listing's stat
/// is caught), and read up to [`MAX_MANIFEST_BYTES`]. `Ok(None)`: the file is gone.
///
/// # Errors
/// [`ManifestError::Read`] for I/O errors (nothing known about the content),
/// [`ManifestError::NotRegular`] and [`ManifestError::TooLarge`] otherwise.
fn read_manifest(path: &Path, origin: &ManifestOrigin) -> Result<Option<Vec<u8>>, ManifestError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let read_error = |source| ManifestError::Read {
        origin: origin.clone(),
        source,
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let metadata = file.metadata().map_err(read_error)?;
    if let Some(kind) = not_regular(&metadata.file_type()) {
        return Err(ManifestError::NotRegular {
            origin: origin.clone(),
            kind,
        });
    }
    let too_large = || ManifestError::TooLarge {
        origin: origin.clone(),
        limit: MAX_MANIFEST_BYTES,
    };
    if metadata.len() > MAX_MANIFEST_BYTES {
        return Err(too_large());
    }
    // The file may grow after the stat: read one byte past the limit to know.
    let mut data = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(read_error)?;
    if data.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_large());
    }
    Ok(Some(data))
}

async fn next_event(
    events: &mut Option<inotify::EventStream<Vec<u8>>>,
) -> Option<std::io::Result<inotify::Event<std::ffi::OsString>>> {
    match events {
        Some(stream) => {
            let event = stream.next().await;
            if let Some(Ok(e)) = &event
                && e.mask.intersects(
                    inotify::EventMask::DELETE_SELF
                        | inotify::EventMask::MOVE_SELF
                        | inotify::EventMask::IGNORED,
                )
            {
                return None;
            }
            event
        }
        None => std::future::pending().await,
    }
}

/// The `--manifest-url` source.
pub struct HttpSource {
    url: String,
    node_name: String,
    period: Duration,
    timeout: Duration,
    seen: SeenTimes,
    /// The pods of the last fetch, by origin, for [`dedupe`].
    sent: HashMap<ManifestOrigin, String>,
}

impl HttpSource {
    #[must_use]
    pub fn new(url: String, node_name: String, period: Duration, timeout: Duration) -> Self {
        Self {
            url,
            node_name,
            period,
            timeout,
            seen: SeenTimes::default(),
            sent: HashMap::new(),
        }
    }

    /// Fetches once: the pods and the errors of the items that gave none. The body is
    /// parsed off the async threads.
    ///
    /// # Errors
    /// The fetch failed, or the body cannot be used as a whole (too large, not YAML/JSON,
    /// too deep): its pods are unknown.
    pub async fn fetch_once(
        &mut self,
        now: Timestamp,
    ) -> Result<(Vec<StaticPod>, Vec<ManifestError>), ManifestError> {
        let origin = ManifestOrigin::Url(self.url.clone());
        let body = match tokio::time::timeout(self.timeout, get(&self.url)).await {
            Ok(Ok(body)) => body,
            Ok(Err(source)) => return Err(ManifestError::Fetch { origin, source }),
            Err(_) => {
                let source = FetchError::Timeout(self.timeout);
                return Err(ManifestError::Fetch { origin, source });
            }
        };
        let mut pods = Vec::new();
        let mut errors = Vec::new();
        if !body.iter().all(u8::is_ascii_whitespace) {
            let (url, node_name) = (self.url.clone(), self.node_name.clone());
            let parse = tokio::task::spawn_blocking(move || {
                parse_url_manifest(&body, &url, &node_name, now)
            });
            let results = match parse.await {
                Ok(results) => results?,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
            for result in results {
                match result {
                    Ok(pod) => pods.push(pod),
                    Err(e) => errors.push(e),
                }
            }
        }
        let mut pods = dedupe(pods, &self.sent, &mut errors);
        self.seen.stamp(&mut pods, now);
        self.sent = origins(&pods);
        Ok((pods, errors))
    }

    /// Polls every period and sends a snapshot at start and whenever something changed.
    pub async fn run(mut self, tx: mpsc::Sender<PodUpdate>, cancel: CancellationToken) {
        let mut last = Last::default();
        let mut outage = Outage::default();
        let mut poll = tokio::time::interval(self.period);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = poll.tick() => {}
            }
            let fetched = tokio::select! {
                () = cancel.cancelled() => return,
                fetched = self.fetch_once(Timestamp::now()) => fetched,
            };
            match fetched {
                Ok((pods, errors)) => {
                    if let Some(lasted) = outage.recovered(tokio::time::Instant::now()) {
                        tracing::info!(url = %self.url, after = ?lasted, "manifest URL usable again");
                    }
                    let sent = last.send_if_changed(&tx, SourceKind::Http, pods, errors);
                    if sent.await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if outage.failed(tokio::time::Instant::now()) {
                        tracing::warn!(url = %self.url, error = %e.full_text(), "cannot use the manifest URL; keeping its pods");
                    }
                }
            }
        }
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection; returns the body of a 2xx answer.
async fn get(url: &str) -> Result<Bytes, FetchError> {
    let uri: hyper::Uri = url.parse().map_err(FetchError::Url)?;
    let authority = match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(authority)) => authority.clone(),
        _ => return Err(FetchError::UnsupportedUrl),
    };
    let address = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|source| FetchError::Connect {
            authority: authority.to_string(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(FetchError::Http)?;
    let driver = tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::USER_AGENT, "bpflet")
        .body(Empty::<Bytes>::new())
        .map_err(FetchError::Request)?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(FetchError::Http)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status { status });
        }
        let too_large = FetchError::TooLarge {
            limit: MAX_MANIFEST_BYTES,
        };
        let announced = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|len| len > MAX_MANIFEST_BYTES) {
            return Err(too_large);
        }
        let limit = usize::try_from(MAX_MANIFEST_BYTES).unwrap_or(usize::MAX);
        let body = http_body_util::Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large
                } else {
                    FetchError::Body(e)
                }
            })?;
        Ok(body.to_bytes())
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests;
