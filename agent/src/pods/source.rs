//! Static pod sources: a manifest directory or file, and a manifest URL.

use std::fmt;

use super::manifest::{ManifestError, StaticPod};

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
    #[error("cannot connect to {authority}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange failed")]
    Http(#[source] hyper::Error),
    #[error("server answered {status}")]
    Status { status: hyper::StatusCode },
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
}
