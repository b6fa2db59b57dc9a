//! The `eventStream*` settings of the `BpfletConfiguration`: where the agent serves
//! `bpflet.v1.EventService`, who may connect, and the stream's buffer sizes.

use std::path::PathBuf;

use super::file::BpfletConfiguration;
use super::{ConfigError, Typed, clean_absolute};

/// The default socket, also `bpflet trace --remote`'s.
pub const DEFAULT_SOCKET: &str = "/run/bpflet/events.sock";

/// Largest accepted queue, replay and timeline sizes (each event is a few hundred bytes).
const MAX_EVENTS: i64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventStreamConfig {
    /// `None`: `eventStreamSocket: off`.
    pub socket: Option<PathBuf>,
    /// `eventStreamGroup`, resolved: name and gid.
    pub group: Option<(String, u32)>,
    pub limits: HubLimits,
}

impl Default for EventStreamConfig {
    fn default() -> Self {
        Self {
            socket: Some(PathBuf::from(DEFAULT_SOCKET)),
            group: None,
            limits: HubLimits::default(),
        }
    }
}

impl Typed<'_> {
    pub(super) fn event_stream(
        &self,
        bc: &BpfletConfiguration,
    ) -> Result<EventStreamConfig, ConfigError> {
        if let Some(addr) = &bc.event_stream_tls_address {
            return Err(self.invalid(
                "eventStreamTlsAddress",
                format!(
                    "{addr:?}: TLS over TCP for the event stream is not supported yet; use the unix socket (eventStreamSocket, eventStreamGroup)"
                ),
            ));
        }
        let socket = match bc.event_stream_socket.as_deref() {
            None => Some(PathBuf::from(DEFAULT_SOCKET)),
            Some("off") => None,
            Some(path) => Some(
                clean_absolute(path).map_err(|reason| self.invalid("eventStreamSocket", reason))?,
            ),
        };
        let group = match bc.event_stream_group.as_deref() {
            None => None,
            Some(_) if socket.is_none() => {
                return Err(self.invalid(
                    "eventStreamGroup",
                    "needs the event stream socket (eventStreamSocket is off)",
                ));
            }
            Some(name) => match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => Some((name.to_owned(), g.gid.as_raw())),
                Ok(None) => {
                    return Err(self.invalid(
                        "eventStreamGroup",
                        format!("{name:?}: no such group on this node"),
                    ));
                }
                Err(e) => {
                    return Err(self.invalid(
                        "eventStreamGroup",
                        format!("{name:?}: cannot look the group up: {e}"),
                    ));
                }
            },
        };
        let size = |field: &str, value: Option<i64>, default: usize, min: i64| {
            let Some(v) = value else { return Ok(default) };
            if !(min..=MAX_EVENTS).contains(&v) {
                return Err(
                    self.invalid(field, format!("{v} must be between {min} and {MAX_EVENTS}"))
                );
            }
            usize::try_from(v).map_err(|_| self.invalid(field, format!("{v} is too large")))
        };
        let defaults = HubLimits::default();
        Ok(EventStreamConfig {
            socket,
            group,
            limits: HubLimits {
                queue: size("eventStreamQueue", bc.event_stream_queue, defaults.queue, 1)?,
                replay: size(
                    "eventStreamReplay",
                    bc.event_stream_replay,
                    defaults.replay,
                    0,
                )?,
                timeline: size(
                    "eventStreamTimeline",
                    bc.event_stream_timeline,
                    defaults.timeline,
                    1,
                )?,
            },
        })
    }
}

/// Sizes of the stream's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubLimits {
    /// Per-subscriber queue (events), at least 1.
    pub queue: usize,
    /// Replay buffer (events), 0 for none.
    pub replay: usize,
    /// Per-pod timeline (entries), at least 1.
    pub timeline: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self {
            queue: 1024,
            replay: 4096,
            timeline: 64,
        }
    }
}
