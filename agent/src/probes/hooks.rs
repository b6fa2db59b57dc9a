//! Lifecycle hooks: postStart (exec, httpGet, sleep) and the httpGet handler of preStop
//! (the pod worker runs preStop exec and sleep itself).
//!
//! As upstream: an exec hook fails when the command exits non-zero or cannot run; an
//! httpGet hook fails only when no response comes back (the status code is not checked:
//! upstream discards the response), goes to the pod IP unless it names a host, and follows
//! same-host redirects; `tcpSocket` is not a valid hook handler and fails. A failed postStart
//! means the worker kills the container (upstream: event `FailedPostStartHook`, then kill).

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, LifecycleHandler, Pod};
use tracing::{debug, warn};

use super::exec::{MAX_OUTPUT, truncated};
use super::http::{HOOK_USER_AGENT, HeaderError, HttpError, Request};
use super::spec::{ActionError, HttpGet, expand_static};
use crate::config::duration::format_duration;
use crate::model::format_pod;
use crate::runtime::{ContainerRuntime, RuntimeError};

/// Which hook failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    PostStart,
    PreStop,
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PostStart => "postStart",
            Self::PreStop => "preStop",
        })
    }
}

/// A lifecycle hook that failed; each variant names the pod, the container and the hook.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{hook} exec hook {command:?} of container {container} in pod {pod} could not run")]
    ExecRuntime {
        hook: Hook,
        pod: String,
        container: String,
        command: Vec<String>,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error(
        "{hook} exec hook {command:?} of container {container} in pod {pod} exited with code {exit_code}: {output}"
    )]
    ExecExit {
        hook: Hook,
        pod: String,
        container: String,
        command: Vec<String>,
        exit_code: i32,
        output: String,
    },
    #[error("{hook} HTTP hook {url} of container {container} in pod {pod} failed")]
    Http {
        hook: Hook,
        pod: String,
        container: String,
        url: String,
        #[source]
        source: HttpError,
    },
    #[error("{hook} HTTP hook of container {container} in pod {pod} has an invalid header")]
    Header {
        hook: Hook,
        pod: String,
        container: String,
        #[source]
        source: HeaderError,
    },
    #[error("{hook} hook of container {container} in pod {pod} cannot run")]
    Invalid {
        hook: Hook,
        pod: String,
        container: String,
        #[source]
        source: ActionError,
    },
    #[error("{hook} hook of container {container} in pod {pod}: {handler} is not a hook handler")]
    Unsupported {
        hook: Hook,
        pod: String,
        container: String,
        handler: &'static str,
    },
    #[error("{hook} HTTP hook of container {container} in pod {pod}: the pod has no IP")]
    NoPodIp {
        hook: Hook,
        pod: String,
        container: String,
    },
    #[error("{hook} hook of container {container} in pod {pod} did not finish within {}", format_duration(*timeout))]
    Timeout {
        hook: Hook,
        pod: String,
        container: String,
        timeout: Duration,
    },
}

/// Runs the container's postStart hook, if it has one, right after the container started.
/// `timeout` bounds the whole hook (`None`: no bound, as upstream, where a hook that never
/// returns holds the pod worker).
///
/// On an error the caller kills the container (reason `FailedPostStartHook`) and lets the
/// restart policy decide.
///
/// # Errors
/// The hook failed, could not run, or did not finish within `timeout`.
pub async fn run_post_start<R: ContainerRuntime>(
    runtime: &R,
    pod: &Pod,
    container: &Container,
    container_id: &str,
    pod_ip: Option<IpAddr>,
    timeout: Option<Duration>,
) -> Result<(), HookError> {
    let Some(handler) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
    else {
        return Ok(());
    };
    let hook = Hook::PostStart;
    let run = run_handler(runtime, hook, handler, pod, container, container_id, pod_ip);
    let result = match timeout {
        Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
            Err(HookError::Timeout {
                hook,
                pod: format_pod(pod),
                container: container.name.clone(),
                timeout: limit,
            })
        }),
        None => run.await,
    };
    if result.is_ok() {
        debug!(pod = %format_pod(pod), container = %container.name, "postStart hook done");
    }
    result
}

/// Runs a preStop (or any) `httpGet` hook handler: one GET, following same-host
/// redirects, within `timeout` (the caller passes what is left of the grace period).
///
/// # Errors
/// No response (connection, TLS or protocol failure, the timeout), an invalid port or
/// header, or no pod IP to send it to.
pub async fn run_http_hook(
    action: &HTTPGetAction,
    pod: &Pod,
    container: &Container,
    pod_ip: Option<IpAddr>,
    timeout: Duration,
) -> Result<(), HookError> {
    http_hook(Hook::PreStop, action, pod, container, pod_ip, timeout).await
}

async fn run_handler<R: ContainerRuntime>(
    runtime: &R,
    hook: Hook,
    handler: &LifecycleHandler,
    pod: &Pod,
    container: &Container,
    container_id: &str,
    pod_ip: Option<IpAddr>,
) -> Result<(), HookError> {
    if let Some(exec) = &handler.exec {
        let env = container.env.as_deref().unwrap_or_default();
        let command: Vec<String> = exec
            .command
            .iter()
            .flatten()
            .map(|a| expand_static(a, env))
            .collect();
        if command.is_empty() {
            return Err(HookError::Invalid {
                hook,
                pod: format_pod(pod),
                container: container.name.clone(),
                source: ActionError::EmptyCommand,
            });
        }
        // Zero: no runtime-side limit (as upstream); the caller's timeout bounds the hook.
        let out = runtime
            .exec_sync(container_id, &command, Duration::ZERO)
            .await
            .map_err(|source| HookError::ExecRuntime {
                hook,
                pod: format_pod(pod),
                container: container.name.clone(),
                command: command.clone(),
                source: Box::new(source),
            })?;
        if out.exit_code != 0 {
            let mut combined = out.stdout;
            combined.extend_from_slice(&out.stderr);
            return Err(HookError::ExecExit {
                hook,
                pod: format_pod(pod),
                container: container.name.clone(),
                command,
                exit_code: out.exit_code,
                output: truncated(&combined, MAX_OUTPUT),
            });
        }
        return Ok(());
    }
    if let Some(action) = &handler.http_get {
        // Without a caller's bound the request still needs one; a day is "none".
        return http_hook(
            hook,
            action,
            pod,
            container,
            pod_ip,
            Duration::from_secs(86_400),
        )
        .await;
    }
    if let Some(sleep) = &handler.sleep {
        let seconds = u64::try_from(sleep.seconds).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        return Ok(());
    }
    let handler_name = if handler.tcp_socket.is_some() {
        "tcpSocket"
    } else {
        "an empty handler"
    };
    Err(HookError::Unsupported {
        hook,
        pod: format_pod(pod),
        container: container.name.clone(),
        handler: handler_name,
    })
}

async fn http_hook(
    hook: Hook,
    action: &HTTPGetAction,
    pod: &Pod,
    container: &Container,
    pod_ip: Option<IpAddr>,
    timeout: Duration,
) -> Result<(), HookError> {
    let get = HttpGet::resolve(action, container).map_err(|source| HookError::Invalid {
        hook,
        pod: format_pod(pod),
        container: container.name.clone(),
        source,
    })?;
    let default_host = match (&get.host, pod_ip) {
        (Some(h), _) => h.clone(),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => {
            return Err(HookError::NoPodIp {
                hook,
                pod: format_pod(pod),
                container: container.name.clone(),
            });
        }
    };
    let request =
        Request::new(&get, &default_host, HOOK_USER_AGENT).map_err(|source| HookError::Header {
            hook,
            pod: format_pod(pod),
            container: container.name.clone(),
            source,
        })?;
    let response = request
        .send(timeout)
        .await
        .map_err(|source| HookError::Http {
            hook,
            pod: format_pod(pod),
            container: container.name.clone(),
            url: request.url().to_string(),
            source,
        })?;
    let code = response.status.as_u16();
    if !(200..400).contains(&code) {
        // Upstream ignores the status too; say so where operators look.
        warn!(pod = %format_pod(pod), container = %container.name, %hook, url = %response.url, status = code, "HTTP hook answered with an error status (the hook still counts as run)");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
