//! Small helpers around tokio's clock.

use tokio::time::Instant;

/// Sleeps until `deadline`, or forever without one: a `select!` arm for a timer that may
/// be unset.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
