//! One run per work directory: an exclusive `flock` on a file in it, holding the owner's pid.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Locks `path` (created if needed) for this process and writes our pid into it; the lock
/// goes when the returned file is closed, also by a crash. When another process holds it,
/// fails with `busy(holder's pid)`.
///
/// # Errors
/// The lock is held, or the file cannot be opened or written.
pub fn exclusive(path: &Path, busy: impl FnOnce(&str) -> String) -> Result<Flock<fs::File>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => {
            let holder = fs::read_to_string(path).unwrap_or_default();
            bail!("{}", busy(holder.trim()));
        }
        Err((_, e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
    };
    lock.set_len(0)
        .and_then(|()| write!(lock, "{}", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run.lock");
        let held = exclusive(&path, |_| unreachable!("free")).expect("first lock");
        let err = exclusive(&path, |pid| format!("held by {pid}")).expect_err("second lock");
        assert_eq!(err.to_string(), format!("held by {}", std::process::id()));
        drop(held);
        exclusive(&path, |_| unreachable!("released")).expect("free again");
    }
}
