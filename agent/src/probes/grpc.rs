//! The `grpc` handler: `grpc.health.v1.Health/Check` over plain HTTP/2 (as upstream: no
//! TLS), passing when the answer is `SERVING`.

use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::describe;
use super::http::PROBE_USER_AGENT;
use super::threshold::Outcome;
use crate::config::duration::format_duration;

/// Checks `service` (empty: the whole server) at `host:port` within `timeout`.
pub async fn probe_grpc(host: &str, port: u16, service: &str, timeout: Duration) -> Outcome {
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let endpoint = match Endpoint::from_shared(format!("http://{authority}"))
        .and_then(|e| e.user_agent(PROBE_USER_AGENT))
    {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return Outcome::Error(describe(&e)),
    };
    let deadline = Instant::now() + timeout;
    let within = format_duration(timeout);
    let channel = match tokio::time::timeout_at(deadline, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => {
            return Outcome::Failure(format!(
                "timeout: failed to connect service {authority:?} within {within}: {}",
                describe(&e)
            ));
        }
        Err(_) => {
            return Outcome::Failure(format!(
                "timeout: failed to connect service {authority:?} within {within}"
            ));
        }
    };
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let answer = tokio::time::timeout_at(deadline, HealthClient::new(channel).check(request)).await;
    match answer {
        Err(_) => Outcome::Failure(format!(
            "timeout: health rpc did not complete within {within}"
        )),
        Ok(Err(status)) if status.code() == Code::DeadlineExceeded => Outcome::Failure(format!(
            "timeout: health rpc did not complete within {within}"
        )),
        Ok(Err(status)) if status.code() == Code::Unimplemented => Outcome::Failure(format!(
            "this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
            status.message()
        )),
        Ok(Err(status)) => Outcome::Failure(format!(
            "rpc error: code = {:?} desc = {}",
            status.code(),
            status.message()
        )),
        Ok(Ok(response)) => match response.into_inner().status() {
            ServingStatus::Serving => Outcome::Success(String::new()),
            other => Outcome::Failure(format!(
                "service unhealthy (responded with {:?})",
                other.as_str_name()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic_health::ServingStatus as Reported;

    use super::*;

    /// A tonic health server on 127.0.0.1: the server is SERVING, service `db` NOT_SERVING,
    /// service `cache` SERVING.
    async fn serve_health() -> u16 {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("", Reported::Serving).await;
        reporter
            .set_service_status("db", Reported::NotServing)
            .await;
        reporter
            .set_service_status("cache", Reported::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            // Keep the reporter alive as long as the server.
            let _reporter = reporter;
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .expect("health server");
        });
        port
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn serving_passes_other_answers_fail() {
        let port = serve_health().await;
        assert_eq!(
            probe_grpc("127.0.0.1", port, "", SECOND).await,
            Outcome::Success(String::new())
        );
        assert_eq!(
            probe_grpc("127.0.0.1", port, "cache", SECOND).await,
            Outcome::Success(String::new())
        );
        assert_eq!(
            probe_grpc("127.0.0.1", port, "db", SECOND).await,
            Outcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".to_owned())
        );
        let out = probe_grpc("127.0.0.1", port, "unknown", SECOND).await;
        assert!(
            matches!(&out, Outcome::Failure(m) if m.starts_with("rpc error: code = NotFound")),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn a_server_without_the_health_service_fails() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            // A gRPC server with some other service only.
            let (_, other) = tonic_health::server::health_reporter();
            let routes = tonic::service::Routes::default();
            drop(other);
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .expect("empty server");
        });
        let out = probe_grpc("127.0.0.1", port, "", SECOND).await;
        assert!(
            matches!(&out, Outcome::Failure(m) if m.starts_with("this server does not implement the grpc health protocol")),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn nothing_listening_fails_to_connect() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let out = probe_grpc("127.0.0.1", port, "", SECOND).await;
        assert!(
            matches!(&out, Outcome::Failure(m) if m.starts_with(&format!("timeout: failed to connect service \"127.0.0.1:{port}\" within 1s"))),
            "{out:?}"
        );
    }
}
