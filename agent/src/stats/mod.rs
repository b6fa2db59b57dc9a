//! Resource statistics: what metrics-server and Prometheus read from a kubelet.
//!
//! - [`read`]: one cgroup's CPU and memory counters (v1 and v2) and the node's `/proc` files.
//! - [`sample`]: the background sampler (every [`sample::HOUSEKEEPING`]) that reads the
//!   node, every running pod and container into a [`sample::Snapshot`]; CPU rates from its
//!   last two readings; volumes walked at most once a minute.
//! - [`summary`]: `/stats/summary` (`stats/v1alpha1` `Summary`).
//! - [`prom`]: `/metrics/resource` and `/metrics/cadvisor` (Prometheus text).
//!
//! The HTTP handlers only render the last snapshot ([`routes`]); none reads a file.

pub mod prom;
pub mod read;
pub mod sample;
pub mod summary;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use sample::{Sampler, SamplerRoots, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no {what} in it")]
    Malformed { path: PathBuf, what: &'static str },
    #[error("cannot statvfs {path}")]
    Statvfs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot measure {path}")]
    Walk {
        path: PathBuf,
        #[source]
        source: Box<crate::eviction::EvictionError>,
    },
}

impl StatsError {
    /// The file (a cgroup that went away) does not exist.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The last snapshot the sampler published; the handlers' read handle.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    last: Arc<RwLock<Option<Arc<Snapshot>>>>,
}

impl Stats {
    pub fn publish(&self, snapshot: Snapshot) {
        *self
            .last
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(snapshot));
    }

    #[must_use]
    pub fn last(&self) -> Option<Arc<Snapshot>> {
        self.last
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// `/stats/summary`, `/metrics/resource` and `/metrics/cadvisor` over `stats`.
pub fn routes(stats: Stats) -> Router {
    Router::new()
        .route("/stats/summary", get(summary_handler))
        .route("/stats/summary/", get(summary_handler))
        .route("/metrics/resource", get(resource_handler))
        .route("/metrics/cadvisor", get(cadvisor_handler))
        .with_state(stats)
}

async fn summary_handler(State(stats): State<Stats>, RawQuery(query): RawQuery) -> Response {
    let Some(s) = stats.last() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "stats not sampled yet\n".to_owned(),
        )
            .into_response();
    };
    let only = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .any(|p| p == "only_cpu_and_memory=true");
    (
        [(header::CONTENT_TYPE, "application/json")],
        summary::render(&s, only).to_string(),
    )
        .into_response()
}

const PROM_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn resource_handler(State(stats): State<Stats>) -> Response {
    let s = stats.last();
    (
        [(header::CONTENT_TYPE, PROM_TEXT)],
        prom::resource_metrics(s.as_deref()),
    )
        .into_response()
}

async fn cadvisor_handler(State(stats): State<Stats>) -> Response {
    let s = stats.last();
    (
        [(header::CONTENT_TYPE, PROM_TEXT)],
        prom::cadvisor_metrics(s.as_deref(), jiff::Timestamp::now()),
    )
        .into_response()
}
