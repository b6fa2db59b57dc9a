//! `/proc/<pid>/mountinfo` (proc(5)), the parts bpflet uses: where each file system is
//! mounted, its type and its super options. It needs nothing but std: xtask compiles this
//! same file as `xtask::mountinfo` (one parser for the agent, the harness and the chores).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    /// Per-superblock options, e.g. `rw,memory` for a cgroup v1 memory hierarchy.
    pub super_options: String,
}

/// Parses mountinfo text: `36 35 98:0 /root /mnt rw,noatime master:1 - ext3 /dev/root rw`.
/// Lines that do not parse are skipped.
pub fn parse(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let mount_point = fields.get(4)?;
    let sep = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
    Some(MountEntry {
        mount_point: PathBuf::from(OsStr::from_bytes(&unescape_octal(mount_point))),
        fstype: String::from_utf8_lossy(fields.get(sep + 1)?).into_owned(),
        super_options: String::from_utf8_lossy(fields.get(sep + 3)?).into_owned(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && let Some(digits) = s.get(i + 1..i + 4)
            && digits.iter().all(|b| (b'0'..=b'7').contains(b))
            && let Ok(b) = u8::try_from(
                digits
                    .iter()
                    .fold(0u32, |acc, d| (acc << 3) | u32::from(d - b'0')),
            )
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mounts_with_escapes_and_optional_fields() {
        let text = b"36 35 98:0 /root /mnt/with\\040space rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue
41 25 0:36 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
50 25 0:40 / /tricky\\134name rw - ext4 /dev/vdb rw
garbage line
";
        let m = parse(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].mount_point, PathBuf::from("/tricky\\name"));
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[0].super_options, "rw,errors=continue");
        assert_eq!(m[1].fstype, "cgroup");
        assert_eq!(m[1].super_options, "rw,memory");
    }
}
