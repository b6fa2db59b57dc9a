//! The `tcpSocket` handler: the port accepts a connection within the timeout.

use std::time::Duration;

use tokio::net::TcpStream;

use super::threshold::Outcome;
use crate::config::duration::format_duration;

/// Connects to `host:port` and closes the connection at once.
pub async fn probe_tcp(host: &str, port: u16, timeout: Duration) -> Outcome {
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(stream)) => {
            drop(stream);
            Outcome::Success(String::new())
        }
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {address}: {e}")),
        Err(_) => Outcome::Failure(format!(
            "dial tcp {address}: timed out after {}",
            format_duration(timeout)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_port_passes_closed_port_fails() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(
            probe_tcp("127.0.0.1", port, Duration::from_secs(1)).await,
            Outcome::Success(String::new())
        );
        drop(listener);
        let out = probe_tcp("127.0.0.1", port, Duration::from_secs(1)).await;
        assert!(
            matches!(&out, Outcome::Failure(m) if m.starts_with(&format!("dial tcp 127.0.0.1:{port}: ")) && m.contains("refused")),
            "{out:?}"
        );
    }
}
