//! Formatting shared by every subsystem's error type: an error and its `source()` chain
//! on one line, for logs and for messages shown to users.

use std::error::Error;

/// The error's causes (its `source()` chain, outermost first) joined with ": ", without
/// the error's own message: for a log's `cause` field beside `error`. Empty when the error
/// has no source.
pub fn error_chain(e: &dyn Error) -> String {
    let mut out = Vec::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push(c.to_string());
        cause = c.source();
    }
    out.join(": ")
}

/// The error's message followed by its causes: "a: b: c".
pub fn full_text(e: &dyn Error) -> String {
    let chain = error_chain(e);
    if chain.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {chain}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Layer(&'static str, #[source] Option<Box<Layer>>);

    fn layers(names: &[&'static str]) -> Layer {
        names
            .iter()
            .rev()
            .fold(None, |inner, name| Some(Layer(name, inner.map(Box::new))))
            .expect("at least one layer")
    }

    #[test]
    fn chain_and_full_text() {
        let e = layers(&["read config", "open /etc/x", "permission denied"]);
        assert_eq!(error_chain(&e), "open /etc/x: permission denied");
        assert_eq!(full_text(&e), "read config: open /etc/x: permission denied");
        let alone = layers(&["alone"]);
        assert_eq!(error_chain(&alone), "");
        assert_eq!(full_text(&alone), "alone");
    }
}
