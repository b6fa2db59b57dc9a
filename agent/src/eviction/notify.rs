//! The kernel's memory threshold notifier (cgroup v1): an eventfd that becomes readable when
//! a cgroup's `memory.usage_in_bytes` crosses a value, in either direction.
//!
//! Reclaim (and so pressure events) only starts when usage reaches the cgroup's limit; an
//! eviction threshold lies below it. This notifier makes crossing the eviction threshold
//! itself a kernel event, so eviction does not depend on the periodic check to notice it.
//! Cgroup v2 has no equivalent; there, PSI and reclaim events and the periodic check remain.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;

/// Registering the notifier failed: which file, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot register a memory threshold notifier on {path}")]
pub struct NotifyError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// A registered threshold on one cgroup v1 memory cgroup.
pub struct UsageThreshold {
    events: AsyncFd<OwnedFd>,
    /// Kept open for as long as the registration lives.
    _usage: File,
}

impl UsageThreshold {
    /// Registers `threshold_bytes` on the memory cgroup directory `cgroup`.
    pub fn register(cgroup: &Path, threshold_bytes: u64) -> Result<Self, NotifyError> {
        let err = |path: PathBuf| move |source| NotifyError { path, source };
        let usage_path = cgroup.join("memory.usage_in_bytes");
        let usage = File::open(&usage_path).map_err(err(usage_path.clone()))?;
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(NotifyError {
                path: cgroup.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a fresh, valid descriptor nobody else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        let control = cgroup.join("cgroup.event_control");
        fs::write(
            &control,
            format!(
                "{} {} {threshold_bytes}",
                efd.as_raw_fd(),
                usage.as_raw_fd()
            ),
        )
        .map_err(err(control))?;
        // SAFETY: the AsyncFd owns `efd`, which stays open and unchanged until it is dropped.
        let events = unsafe { AsyncFd::register_with_interest(efd, tokio::io::Interest::READABLE) }
            .map_err(|e| NotifyError {
                path: cgroup.to_owned(),
                source: e.into(),
            })?;
        Ok(Self {
            events,
            _usage: usage,
        })
    }

    /// Waits until usage crosses the threshold (again).
    pub async fn crossed(&mut self) -> io::Result<()> {
        loop {
            let mut guard = self.events.readable().await?;
            let mut counter = [0u8; 8];
            // SAFETY: reading 8 bytes into a valid buffer from an eventfd we own.
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    counter.as_mut_ptr().cast(),
                    counter.len(),
                )
            };
            if n == 8 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            guard.clear_ready();
        }
    }
}
