//! Static pod sources: a manifest directory or file (`--pod-manifest-path`), noticed at once
//! through inotify with a periodic full rescan as backstop, and a manifest URL
//! (`--manifest-url`) polled every `httpCheckFrequency`.
//!
//! Each source sends a full [`PodUpdate::Snapshot`] whenever its pods or errors changed
//! (and once at start). A malformed manifest yields a [`ManifestError`] for that file only;
//! when an HTTP fetch fails the snapshot keeps the last pods fetched, so a flaky server does
//! not stop running pods.

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
    CONFIG_SEEN_ANNOTATION, ManifestError, ManifestOrigin, StaticPod, parse_pod_manifest,
    parse_url_manifest,
};

/// Which source a snapshot comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    /// `--pod-manifest-path` / `staticPodPath`.
    File,
    /// `--manifest-url` / `staticPodURL`.
    Http,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::File => "file",
            Self::Http => "http",
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

/// Why fetching `--manifest-url` failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL")]
    Url(#[source] hyper::http::uri::InvalidUri),
    #[error("only http:// URLs with a host are supported")]
    UnsupportedUrl,
    #[error("cannot connect to {authority}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the request")]
    Request(#[source] hyper::http::Error),
    #[error("HTTP exchange failed")]
    Http(#[source] hyper::Error),
    #[error("server answered {status}")]
    Status { status: hyper::StatusCode },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
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
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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

/// Drops later pods whose namespace/name an earlier one already has (upstream keeps the first).
fn dedupe(pods: Vec<StaticPod>, errors: &mut Vec<ManifestError>) -> Vec<StaticPod> {
    let mut by_name: HashMap<(String, String), ManifestOrigin> = HashMap::new();
    let mut kept = Vec::with_capacity(pods.len());
    for sp in pods {
        let key = (
            sp.pod.metadata.namespace.clone().unwrap_or_default(),
            sp.pod.metadata.name.clone().unwrap_or_default(),
        );
        if let Some(first) = by_name.get(&key) {
            errors.push(ManifestError::Duplicate {
                origin: sp.origin.clone(),
                name: key.1,
                namespace: key.0,
                other: first.clone(),
            });
            continue;
        }
        by_name.insert(key, sp.origin.clone());
        kept.push(sp);
    }
    kept
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
}

/// The manifest files found, sorted, each with its stat, and why any could not be listed.
struct Listing {
    files: Vec<(PathBuf, FileStat)>,
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
        }
    }

    /// Turns inotify off (filesystems without it, or tests of the rescan backstop).
    #[must_use]
    pub fn with_inotify(mut self, enabled: bool) -> Self {
        self.inotify = enabled;
        self
    }

    /// Reads every manifest now: the pods and the errors of the files that did not parse.
    pub fn scan(&mut self, now: Timestamp) -> (Vec<StaticPod>, Vec<ManifestError>) {
        let listing = self.list();
        self.scan_listing(listing, now)
    }

    /// [`FileSource::scan`] of the files `listing` found.
    fn scan_listing(
        &mut self,
        listing: Listing,
        now: Timestamp,
    ) -> (Vec<StaticPod>, Vec<ManifestError>) {
        let Listing { files, mut errors } = listing;
        let mut pods = Vec::new();
        self.parsed
            .retain(|path, _| files.binary_search_by(|(f, _)| f.cmp(path)).is_ok());
        for (file, stat) in files {
            if let Some(p) = self.parsed.get(&file)
                && p.settled
                && stat == p.stat
            {
                pods.push(p.pod.clone());
                continue;
            }
            let origin = ManifestOrigin::File(file.clone());
            let data = match std::fs::read(&file) {
                Ok(data) => data,
                Err(source) => {
                    self.parsed.remove(&file);
                    errors.push(ManifestError::Read { origin, source });
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
        let mut pods = dedupe(pods, &mut errors);
        self.must_rescan = !errors.is_empty();
        self.seen.stamp(&mut pods, now);
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

    /// The manifest files now, with their stat: a directory read and a stat per file.
    fn list(&self) -> Listing {
        let mut errors = Vec::new();
        let files = self.manifest_files(&mut errors);
        Listing { files, errors }
    }

    /// The files to read, sorted, with their stat (one `stat` each): the path itself, or the
    /// directory's visible regular files.
    fn manifest_files(&self, errors: &mut Vec<ManifestError>) -> Vec<(PathBuf, FileStat)> {
        let origin = ManifestOrigin::File(self.path.clone());
        let metadata = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(source) => {
                errors.push(ManifestError::Read { origin, source });
                return Vec::new();
            }
        };
        if !metadata.is_dir() {
            return vec![(self.path.clone(), FileStat::of(&metadata))];
        }
        let entries = match std::fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(source) => {
                errors.push(ManifestError::Read { origin, source });
                return Vec::new();
            }
        };
        let mut files: Vec<(PathBuf, FileStat)> = entries
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let path = e.path();
                // Follows symlinks, as reading the file does.
                let metadata = std::fs::metadata(&path).ok()?;
                metadata.is_file().then(|| (path, FileStat::of(&metadata)))
            })
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        files
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
    pub async fn run(mut self, tx: mpsc::Sender<PodUpdate>, cancel: CancellationToken) {
        let mut last = Last::default();
        let mut events = self.watch();
        // The first scan is the loop's own; rescans follow one period later.
        let mut rescan = tokio::time::interval_at(
            tokio::time::Instant::now() + self.rescan_period,
            self.rescan_period,
        );
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let listing = self.list();
            if !self.unchanged(&listing) {
                let (pods, errors) = self.scan_listing(listing, Timestamp::now());
                let sent = last.send_if_changed(&tx, SourceKind::File, pods, errors);
                if sent.await.is_err() {
                    return;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = rescan.tick() => {
                    // The watched directory may have appeared or been replaced.
                    if self.inotify && events.is_none() {
                        events = self.watch();
                    }
                }
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
                        // The stream broke (or the directory went away): rewatch on the next
                        // rescan.
                        events = None;
                    }
                }
            }
        }
    }
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
    last_pods: Vec<StaticPod>,
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
            last_pods: Vec::new(),
        }
    }

    /// Fetches once: the pods and errors. A failed fetch keeps the previous pods.
    pub async fn fetch_once(&mut self, now: Timestamp) -> (Vec<StaticPod>, Vec<ManifestError>) {
        let origin = ManifestOrigin::Url(self.url.clone());
        let body = match tokio::time::timeout(self.timeout, get(&self.url)).await {
            Ok(Ok(body)) => body,
            Ok(Err(source)) => {
                return (
                    self.last_pods.clone(),
                    vec![ManifestError::Fetch { origin, source }],
                );
            }
            Err(_) => {
                let source = FetchError::Timeout(self.timeout);
                return (
                    self.last_pods.clone(),
                    vec![ManifestError::Fetch { origin, source }],
                );
            }
        };
        let mut pods = Vec::new();
        let mut errors = Vec::new();
        if !body.iter().all(u8::is_ascii_whitespace) {
            for result in parse_url_manifest(&body, &self.url, &self.node_name, now) {
                match result {
                    Ok(pod) => pods.push(pod),
                    Err(e) => errors.push(e),
                }
            }
        }
        let mut pods = dedupe(pods, &mut errors);
        self.seen.stamp(&mut pods, now);
        self.last_pods.clone_from(&pods);
        (pods, errors)
    }

    /// Polls every period and sends a snapshot at start and whenever something changed.
    pub async fn run(mut self, tx: mpsc::Sender<PodUpdate>, cancel: CancellationToken) {
        let mut last = Last::default();
        let mut poll = tokio::time::interval(self.period);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = poll.tick() => {}
            }
            let (pods, errors) = tokio::select! {
                () = cancel.cancelled() => return,
                fetched = self.fetch_once(Timestamp::now()) => fetched,
            };
            let sent = last.send_if_changed(&tx, SourceKind::Http, pods, errors);
            if sent.await.is_err() {
                return;
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
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(FetchError::Http)?;
        Ok(body.to_bytes())
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests;
