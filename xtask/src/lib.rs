//! The library half of xtask: what both `cargo xtask` (the binary in `main.rs`) and the
//! root integration tests in `tests/` use. Import it as `xtask::agent`, `xtask::containerd`,
//! `xtask::images`, `xtask::registry`; do not `mod` these files again from `main.rs`.
//!
//! Nothing here may need `protoc` or the agent crate: `cargo xtask setup` builds this on
//! a fresh machine before anything is installed.

pub mod agent;
pub mod cluster;
pub mod cluster_metrics;
pub mod containerd;
pub mod images;
pub mod lock;
/// `/proc/<pid>/mountinfo`: the agent's own parser. The file needs nothing but std, so it
/// is compiled here too rather than written a second time (xtask cannot depend on the agent
/// crate, see above).
#[path = "../../agent/src/mountinfo.rs"]
pub mod mountinfo;
pub mod peer;
pub mod registry;

/// A command as a shell-like line, with the environment variables it sets, for messages.
pub fn describe(cmd: &std::process::Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.display(), v.display())))
        .collect();
    words.push(cmd.get_program().display().to_string());
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn quote(arg: &std::ffi::OsStr) -> String {
    let s = arg.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=+/.,:@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` (stdin closed) and returns its stdout; fails naming the command and quoting
/// its stderr.
///
/// # Errors
/// The command cannot start or exits unsuccessfully.
pub fn command_output(cmd: &mut std::process::Command) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let line = describe(cmd);
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
