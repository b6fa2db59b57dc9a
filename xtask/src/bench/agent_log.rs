//! The agent's JSON log (`--log-format json`: one tracing-subscriber JSON object per line),
//! read as typed records. The benches find the agent's own timestamps and numbers here
//! (when it saw a pod, when it decided to evict and how long that took) by message and
//! field, never by matching the text log's prose.

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context as _, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

/// One record of the agent's JSON log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LogRecord {
    /// When the agent wrote it.
    pub(crate) at: SystemTime,
    /// `INFO`, `WARN`, ...
    pub(crate) level: String,
    /// The module that wrote it, such as `bpflet::eviction::manager`.
    pub(crate) target: String,
    pub(crate) message: String,
    /// Every other field of the event.
    pub(crate) fields: Map<String, Value>,
}

/// The shape tracing-subscriber's JSON formatter writes.
#[derive(Deserialize)]
struct RawRecord {
    timestamp: String,
    level: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    fields: Map<String, Value>,
}

impl LogRecord {
    /// A log line as a record; `None` for anything else (a line the agent wrote without its
    /// logger, such as its last words on a fatal error, or a record without a valid
    /// timestamp).
    pub(crate) fn parse(line: &str) -> Option<Self> {
        let raw: RawRecord = serde_json::from_str(line).ok()?;
        let mut fields = raw.fields;
        let message = match fields.remove("message") {
            Some(Value::String(m)) => m,
            _ => String::new(),
        };
        Some(Self {
            at: parse_time(&raw.timestamp)?,
            level: raw.level,
            target: raw.target,
            message,
            fields,
        })
    }

    /// A string field.
    pub(crate) fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key)?.as_str()
    }

    /// A non-negative integer field.
    pub(crate) fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key)?.as_u64()
    }

    /// Whether the record's `pod` field names the pod `full_name` (`<name>_<namespace>(<uid>)`,
    /// as the agent formats a pod, in any namespace).
    pub(crate) fn is_about_pod(&self, full_name: &str) -> bool {
        self.str("pod").is_some_and(|p| {
            p.strip_prefix(full_name)
                .is_some_and(|rest| rest.starts_with('_'))
        })
    }
}

/// Every record of a log's text, in order; other lines are left out.
pub(crate) fn parse(text: &str) -> Vec<LogRecord> {
    text.lines().filter_map(LogRecord::parse).collect()
}

/// Every record of the log file at `path`.
pub(crate) fn read(path: &Path) -> Result<Vec<LogRecord>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse(&String::from_utf8_lossy(&bytes)))
}

/// The event source `bpflet trace` logged when it started tracing (`Bpf` or `Poll`).
pub(crate) fn tracing_source(log: &[LogRecord]) -> Option<&str> {
    log.iter()
        .find(|r| r.message == "tracing")
        .map(|r| r.str("source").unwrap_or_default())
}

/// An RFC 3339 timestamp (`2026-11-23T19:08:59.391182Z`, any offset).
pub(crate) fn parse_time(text: &str) -> Option<SystemTime> {
    text.parse::<jiff::Timestamp>().ok().map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn records_parse_with_their_fields() {
        let line = r#"{"timestamp":"2026-11-23T19:08:59.391182Z","level":"INFO","fields":{"message":"new pod","pod":"lat1-event-3-benchnode_default(4be5)","usage_threshold":429916160},"target":"bpflet::pods::manager"}"#;
        let r = LogRecord::parse(line).unwrap();
        assert_eq!(r.at, UNIX_EPOCH + Duration::new(1_795_460_939, 391_182_000));
        assert_eq!(
            (r.level.as_str(), r.target.as_str(), r.message.as_str()),
            ("INFO", "bpflet::pods::manager", "new pod")
        );
        assert_eq!(r.str("pod"), Some("lat1-event-3-benchnode_default(4be5)"));
        assert_eq!(r.u64("usage_threshold"), Some(429_916_160));
        assert_eq!(r.u64("pod"), None);
        assert_eq!(r.str("missing"), None);
        assert!(!r.fields.contains_key("message"));
        assert!(r.is_about_pod("lat1-event-3-benchnode"));
        assert!(!r.is_about_pod("lat1-event-3"));
        assert!(!r.is_about_pod("lat1-event-30-benchnode"));
    }

    #[test]
    fn other_lines_are_left_out() {
        let text = "bpflet: invalid configuration: evictionHard\n\
                    {\"kind\":\"exit\"}\n\
                    {\"timestamp\":\"yesterday\",\"level\":\"INFO\",\"fields\":{}}\n\
                    {\"timestamp\":\"2026-11-23T19:09:00Z\",\"level\":\"WARN\",\"fields\":{\"message\":\"x\"},\"target\":\"t\"}\n";
        let records = parse(text);
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(
            records[0].at,
            UNIX_EPOCH + Duration::from_secs(1_795_460_940)
        );
    }

    #[test]
    fn times_are_rfc3339_in_any_offset() {
        assert_eq!(
            parse_time("2000-02-29T00:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(951_782_400))
        );
        assert_eq!(
            parse_time("2000-02-29T01:00:00.000000001+01:00"),
            Some(UNIX_EPOCH + Duration::new(951_782_400, 1))
        );
        assert_eq!(parse_time("2026-11-23T19:08:59.x1Z"), None);
        assert_eq!(parse_time("garbage"), None);
    }
}
