//! A container's probe as the prober runs it: the `v1.Probe` timings with upstream defaults,
//! and the handler resolved against the container (port names, static env in commands).

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, EnvVar, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Which of a container's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    /// As upstream names it in events and the `probe_type` metric label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "Startup",
            Self::Liveness => "Liveness",
            Self::Readiness => "Readiness",
        }
    }

    /// The container's probe of this kind.
    #[must_use]
    pub fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            Self::Startup => container.startup_probe.as_ref(),
            Self::Liveness => container.liveness_probe.as_ref(),
            Self::Readiness => container.readiness_probe.as_ref(),
        }
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a probe or hook handler cannot be run as written. The prober reports it on every run
/// (result `unknown`, as upstream's prober errors) instead of guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("the handler sets none of exec, httpGet, tcpSocket and grpc")]
    NoHandler,
    #[error("exec handler without a command")]
    EmptyCommand,
    #[error("container {container} has no port named {name:?}")]
    PortName { container: String, name: String },
    #[error("port {port} is out of range 1-65535")]
    PortRange { port: i64 },
    #[error("scheme {scheme:?} is neither HTTP nor HTTPS")]
    Scheme { scheme: String },
}

/// `httpGet.scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// An `httpGet` handler with its port resolved. `host` empty: the pod IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    pub scheme: Scheme,
    pub host: Option<String>,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
    /// `httpHeaders`, in order (a `Host` header sets the request's host).
    pub headers: Vec<(String, String)>,
}

impl HttpGet {
    /// Resolves a `v1.HTTPGetAction` against the container it belongs to.
    ///
    /// # Errors
    /// An unknown scheme, a port name the container does not declare, a port out of range.
    pub fn resolve(action: &HTTPGetAction, container: &Container) -> Result<Self, ActionError> {
        let scheme = match action.scheme.as_deref() {
            None | Some("" | "HTTP") => Scheme::Http,
            Some("HTTPS") => Scheme::Https,
            Some(other) => {
                return Err(ActionError::Scheme {
                    scheme: other.to_owned(),
                });
            }
        };
        let path = action.path.as_deref().unwrap_or_default();
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        Ok(Self {
            scheme,
            host: action.host.clone().filter(|h| !h.is_empty()),
            port: resolve_port(&action.port, container)?,
            path,
            headers: action
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        })
    }
}

/// What a probe runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A command in the container (static `$(VAR)` references already expanded).
    Exec {
        command: Vec<String>,
    },
    Http(HttpGet),
    Tcp {
        host: Option<String>,
        port: u16,
    },
    /// `grpc.health.v1.Health/Check` on the pod IP; `service` empty checks the server.
    Grpc {
        port: u16,
        service: String,
    },
}

impl Action {
    /// Resolves the probe's handler against its container.
    ///
    /// # Errors
    /// No handler, an empty command, or a port that cannot be resolved.
    pub fn resolve(probe: &Probe, container: &Container) -> Result<Self, ActionError> {
        if let Some(exec) = &probe.exec {
            let command = exec.command.as_deref().unwrap_or_default();
            if command.is_empty() {
                return Err(ActionError::EmptyCommand);
            }
            let env = container.env.as_deref().unwrap_or_default();
            return Ok(Self::Exec {
                command: command.iter().map(|a| expand_static(a, env)).collect(),
            });
        }
        if let Some(http) = &probe.http_get {
            return HttpGet::resolve(http, container).map(Self::Http);
        }
        if let Some(tcp) = &probe.tcp_socket {
            return Ok(Self::Tcp {
                host: tcp.host.clone().filter(|h| !h.is_empty()),
                port: resolve_port(&tcp.port, container)?,
            });
        }
        if let Some(grpc) = &probe.grpc {
            return Ok(Self::Grpc {
                port: port_number(i64::from(grpc.port))?,
                service: grpc.service.clone().unwrap_or_default(),
            });
        }
        Err(ActionError::NoHandler)
    }

    /// `exec`, `httpGet`, `tcpSocket` or `grpc`, for logs.
    #[must_use]
    pub const fn handler_name(&self) -> &'static str {
        match self {
            Self::Exec { .. } => "exec",
            Self::Http(_) => "httpGet",
            Self::Tcp { .. } => "tcpSocket",
            Self::Grpc { .. } => "grpc",
        }
    }
}

/// One probe of one container, ready to schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// The handler, or why it cannot run (reported on every run).
    pub action: Result<Action, ActionError>,
}

/// Upstream defaults (`v1.Probe`): period 10s, timeout 1s, thresholds 1 and 3.
pub const DEFAULT_PERIOD_SECONDS: i32 = 10;
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 1;
pub const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
pub const DEFAULT_FAILURE_THRESHOLD: i32 = 3;

impl ProbeSpec {
    /// The container's probe of `kind`, with defaults applied; `None` if it has none.
    ///
    /// Values the API server would reject are clamped rather than refused: a period, timeout
    /// or threshold below 1 counts as 1, a negative delay as 0, and liveness and startup
    /// probes always use a success threshold of 1 (the API requires it).
    #[must_use]
    pub fn for_container(container: &Container, kind: ProbeKind) -> Option<Self> {
        let probe = kind.of(container)?;
        let at_least_one =
            |v: Option<i32>, default: i32| u32::try_from(v.unwrap_or(default)).unwrap_or(0).max(1);
        let seconds = |v: u32| Duration::from_secs(u64::from(v));
        let success_threshold = match kind {
            ProbeKind::Readiness => {
                at_least_one(probe.success_threshold, DEFAULT_SUCCESS_THRESHOLD)
            }
            ProbeKind::Liveness | ProbeKind::Startup => 1,
        };
        Some(Self {
            kind,
            initial_delay: seconds(
                u32::try_from(probe.initial_delay_seconds.unwrap_or(0)).unwrap_or(0),
            ),
            period: seconds(at_least_one(probe.period_seconds, DEFAULT_PERIOD_SECONDS)),
            timeout: seconds(at_least_one(probe.timeout_seconds, DEFAULT_TIMEOUT_SECONDS)),
            success_threshold,
            failure_threshold: at_least_one(probe.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
            action: Action::resolve(probe, container),
        })
    }
}

/// A port by number, or by the name of one of the container's ports (a name that is all
/// digits is taken as a number when no port has that name, as upstream).
///
/// # Errors
/// An unknown name or a number outside 1-65535.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, ActionError> {
    match port {
        IntOrString::Int(n) => port_number(i64::from(*n)),
        IntOrString::String(name) => {
            let named = container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()));
            match (named, name.parse::<i64>()) {
                (Some(p), _) => port_number(i64::from(p.container_port)),
                (None, Ok(n)) => port_number(n),
                (None, Err(_)) => Err(ActionError::PortName {
                    container: container.name.clone(),
                    name: name.clone(),
                }),
            }
        }
    }
}

fn port_number(port: i64) -> Result<u16, ActionError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(ActionError::PortRange { port })
}

/// Expands `$(NAME)` with the container's env vars that have a literal `value` (upstream's
/// `ExpandContainerCommandOnlyStatic`): `$$` is a literal `$`, unknown names and anything
/// malformed stay as written.
#[must_use]
pub fn expand_static(arg: &str, env: &[EnvVar]) -> String {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    };
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match lookup(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerPort, ExecAction, GRPCAction, HTTPHeader, TCPSocketAction,
    };

    use super::*;

    fn container(probe: Probe) -> Container {
        Container {
            name: "app".to_owned(),
            ports: Some(vec![ContainerPort {
                name: Some("http".to_owned()),
                container_port: 8080,
                ..ContainerPort::default()
            }]),
            env: Some(vec![
                EnvVar {
                    name: "FILE".to_owned(),
                    value: Some("/tmp/healthy".to_owned()),
                    ..EnvVar::default()
                },
                EnvVar {
                    name: "FROM_API".to_owned(),
                    value: None,
                    ..EnvVar::default()
                },
            ]),
            liveness_probe: Some(probe.clone()),
            readiness_probe: Some(probe),
            ..Container::default()
        }
    }

    #[test]
    fn defaults_are_upstream_ones() {
        let c = container(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(80),
                host: None,
            }),
            ..Probe::default()
        });
        let spec = ProbeSpec::for_container(&c, ProbeKind::Liveness).unwrap();
        assert_eq!(spec.initial_delay, Duration::ZERO);
        assert_eq!(spec.period, Duration::from_secs(10));
        assert_eq!(spec.timeout, Duration::from_secs(1));
        assert_eq!(spec.success_threshold, 1);
        assert_eq!(spec.failure_threshold, 3);
        assert_eq!(
            spec.action,
            Ok(Action::Tcp {
                host: None,
                port: 80
            })
        );
        assert!(ProbeSpec::for_container(&c, ProbeKind::Startup).is_none());
    }

    #[test]
    fn nonsense_values_are_clamped_and_liveness_succeeds_once() {
        let c = container(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(80),
                host: None,
            }),
            initial_delay_seconds: Some(-5),
            period_seconds: Some(0),
            timeout_seconds: Some(-1),
            success_threshold: Some(3),
            failure_threshold: Some(0),
            ..Probe::default()
        });
        let live = ProbeSpec::for_container(&c, ProbeKind::Liveness).unwrap();
        assert_eq!(live.initial_delay, Duration::ZERO);
        assert_eq!(live.period, Duration::from_secs(1));
        assert_eq!(live.timeout, Duration::from_secs(1));
        assert_eq!(live.success_threshold, 1);
        assert_eq!(live.failure_threshold, 1);
        let ready = ProbeSpec::for_container(&c, ProbeKind::Readiness).unwrap();
        assert_eq!(ready.success_threshold, 3);
    }

    #[test]
    fn http_get_resolves_named_port_path_scheme_and_headers() {
        let c = container(Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".to_owned()),
                path: Some("healthz?verbose=1".to_owned()),
                scheme: Some("HTTPS".to_owned()),
                host: Some(String::new()),
                http_headers: Some(vec![HTTPHeader {
                    name: "X-Probe".to_owned(),
                    value: "1".to_owned(),
                }]),
            }),
            ..Probe::default()
        });
        let spec = ProbeSpec::for_container(&c, ProbeKind::Readiness).unwrap();
        assert_eq!(
            spec.action,
            Ok(Action::Http(HttpGet {
                scheme: Scheme::Https,
                host: None,
                port: 8080,
                path: "/healthz?verbose=1".to_owned(),
                headers: vec![("X-Probe".to_owned(), "1".to_owned())],
            }))
        );
    }

    #[test]
    fn bad_ports_and_schemes_are_errors_not_guesses() {
        let c = container(Probe::default());
        assert_eq!(
            resolve_port(&IntOrString::String("metrics".to_owned()), &c),
            Err(ActionError::PortName {
                container: "app".to_owned(),
                name: "metrics".to_owned()
            })
        );
        assert_eq!(
            resolve_port(&IntOrString::String("9090".to_owned()), &c),
            Ok(9090)
        );
        assert_eq!(
            resolve_port(&IntOrString::Int(0), &c),
            Err(ActionError::PortRange { port: 0 })
        );
        assert_eq!(
            resolve_port(&IntOrString::Int(70000), &c),
            Err(ActionError::PortRange { port: 70000 })
        );
        let action = HTTPGetAction {
            port: IntOrString::Int(80),
            scheme: Some("FTP".to_owned()),
            ..HTTPGetAction::default()
        };
        assert_eq!(
            HttpGet::resolve(&action, &c),
            Err(ActionError::Scheme {
                scheme: "FTP".to_owned()
            })
        );
        assert_eq!(
            Action::resolve(&Probe::default(), &c),
            Err(ActionError::NoHandler)
        );
        let empty = Probe {
            exec: Some(ExecAction { command: None }),
            ..Probe::default()
        };
        assert_eq!(Action::resolve(&empty, &c), Err(ActionError::EmptyCommand));
    }

    #[test]
    fn grpc_port_and_service() {
        let c = container(Probe::default());
        let probe = Probe {
            grpc: Some(GRPCAction {
                port: 9000,
                service: Some("liveness".to_owned()),
            }),
            ..Probe::default()
        };
        assert_eq!(
            Action::resolve(&probe, &c),
            Ok(Action::Grpc {
                port: 9000,
                service: "liveness".to_owned()
            })
        );
    }

    #[test]
    fn exec_commands_expand_static_env_only() {
        let c = container(Probe::default());
        let env = c.env.as_deref().unwrap();
        assert_eq!(
            expand_static("test -f $(FILE)", env),
            "test -f /tmp/healthy"
        );
        assert_eq!(expand_static("$(FROM_API)", env), "$(FROM_API)");
        assert_eq!(expand_static("$(NOPE) $$(FILE)", env), "$(NOPE) $(FILE)");
        assert_eq!(expand_static("cost: 5$ $(FILE", env), "cost: 5$ $(FILE");
        assert_eq!(expand_static("$", env), "$");
    }
}
