//! Helpers every bench needs: percentile summaries, CPU and RSS of a process, per-program BPF
//! run-time statistics, and Markdown tables.

use std::fmt;
use std::fs;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::output;

// ---------------------------------------------------------------------------------------------
// Percentiles

/// p50/p90/p99/max (nearest-rank) of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none. NaN sorts above every number, so a
    /// NaN sample shows up as `max` rather than vanishing.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        Some(Self {
            n,
            mean: sorted.iter().sum::<f64>() / n as f64,
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            max: sorted[n - 1],
        })
    }
}

/// Milliseconds from `from` to `to` (negative when `to` is earlier).
#[must_use]
pub fn ms_between(from: std::time::SystemTime, to: std::time::SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

/// Runs `step` `n` times, each after a progress line `<what> <i>/<n>` on stderr, and
/// collects what the runs return, in order.
pub fn repeat<T>(
    what: &str,
    n: usize,
    mut step: impl FnMut(usize) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let mut all = vec![];
    for i in 0..n {
        eprintln!("{what} {}/{n}", i + 1);
        all.extend(step(i)?);
    }
    Ok(all)
}

/// `v` with `decimals` decimals; `-` when there is none.
#[must_use]
pub fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// `a / b` as `3.1x`; `-` when `b` is zero.
#[must_use]
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.1}x", a / b)
    } else {
        "-".to_owned()
    }
}

/// The nearest-rank `q`th percentile (0 < q <= 100) of already sorted, non-empty samples.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    assert!(q > 0.0 && q <= 100.0, "percentile {q} out of (0, 100]");
    let rank = (q / 100.0 * sorted.len() as f64).ceil();
    // rank is in 1..=len, so the cast cannot truncate anything that matters.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "1 <= rank <= len"
    )]
    let index = (rank as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

// ---------------------------------------------------------------------------------------------
// CPU time and RSS of a process

/// CPU time (user + system) and resident memory of a process at one instant.
#[derive(Debug, Clone, Copy)]
pub struct ProcSnapshot {
    pub at: Instant,
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

impl ProcSnapshot {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
    pub fn take(pid: u32) -> Result<Self> {
        let at = Instant::now();
        let stat_path = format!("/proc/{pid}/stat");
        let stat =
            fs::read_to_string(&stat_path).with_context(|| format!("reading {stat_path}"))?;
        let ticks = parse_stat_cpu_ticks(&stat).with_context(|| format!("parsing {stat_path}"))?;
        let status_path = format!("/proc/{pid}/status");
        let status =
            fs::read_to_string(&status_path).with_context(|| format!("reading {status_path}"))?;
        let rss_bytes =
            parse_status_rss_bytes(&status).with_context(|| format!("parsing {status_path}"))?;
        Ok(Self {
            at,
            cpu_seconds: ticks as f64 / clock_ticks_per_second()?,
            rss_bytes,
        })
    }
}

/// What a process used between two snapshots (or over a sampled interval).
#[derive(Debug, Clone, Copy)]
pub struct ProcUsage {
    pub wall: Duration,
    pub cpu_seconds: f64,
    /// CPU time over wall time, in percent of one core.
    pub cpu_percent: f64,
    pub rss_max_bytes: u64,
    pub rss_last_bytes: u64,
}

impl ProcUsage {
    /// Usage between two snapshots of the same process (`rss_max` sees only these two).
    pub fn between(start: &ProcSnapshot, end: &ProcSnapshot) -> Self {
        let wall = end.at.saturating_duration_since(start.at);
        let cpu_seconds = end.cpu_seconds - start.cpu_seconds;
        Self {
            wall,
            cpu_seconds,
            cpu_percent: percent_of(cpu_seconds, wall),
            rss_max_bytes: start.rss_bytes.max(end.rss_bytes),
            rss_last_bytes: end.rss_bytes,
        }
    }
}

fn percent_of(cpu_seconds: f64, wall: Duration) -> f64 {
    if wall.is_zero() {
        0.0
    } else {
        100.0 * cpu_seconds / wall.as_secs_f64()
    }
}

/// Samples `pid` every `every` for `interval` (blocking) and returns its CPU time over the
/// interval and the largest RSS seen.
pub fn sample_process(pid: u32, interval: Duration, every: Duration) -> Result<ProcUsage> {
    let start = ProcSnapshot::take(pid)?;
    let deadline = start.at + interval;
    let mut rss_max = start.rss_bytes;
    let mut last = start;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        thread::sleep(every.min(deadline - now));
        last = ProcSnapshot::take(pid)?;
        rss_max = rss_max.max(last.rss_bytes);
    }
    Ok(ProcUsage {
        rss_max_bytes: rss_max,
        ..ProcUsage::between(&start, &last)
    })
}

fn clock_ticks_per_second() -> Result<f64> {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        bail!("sysconf(_SC_CLK_TCK) returned {ticks}");
    }
    Ok(ticks as f64)
}

/// utime + stime, in clock ticks, from the text of `/proc/<pid>/stat`.
fn parse_stat_cpu_ticks(stat: &str) -> Result<u64> {
    // The command name (field 2) is in parentheses and may itself hold spaces and ')'; the
    // fields after the last ')' start at field 3 (state). utime and stime are fields 14, 15.
    let (_, rest) = stat
        .rsplit_once(')')
        .context("no ')' after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        let text = fields
            .get(n - 3)
            .with_context(|| format!("field {n} is missing"))?;
        text.parse()
            .with_context(|| format!("field {n} is not a number: {text:?}"))
    };
    Ok(field(14)? + field(15)?)
}

/// VmRSS in bytes from the text of `/proc/<pid>/status`.
fn parse_status_rss_bytes(status: &str) -> Result<u64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS line (a kernel thread or a zombie?)")?;
    let kib = line
        .trim()
        .strip_suffix("kB")
        .context("VmRSS is not in kB")?
        .trim()
        .parse::<u64>()
        .with_context(|| format!("VmRSS is not a number: {line:?}"))?;
    Ok(kib * 1024)
}

// ---------------------------------------------------------------------------------------------
// BPF program statistics

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns on `kernel.bpf_stats_enabled` and puts the previous value back on drop.
pub struct BpfStatsEnabled {
    previous: String,
}

impl BpfStatsEnabled {
    pub fn enable() -> Result<Self> {
        let previous = fs::read_to_string(BPF_STATS_SYSCTL)
            .with_context(|| format!("reading {BPF_STATS_SYSCTL}"))?;
        fs::write(BPF_STATS_SYSCTL, "1")
            .with_context(|| format!("writing 1 to {BPF_STATS_SYSCTL} (needs root)"))?;
        Ok(Self {
            previous: previous.trim().to_owned(),
        })
    }
}

impl Drop for BpfStatsEnabled {
    fn drop(&mut self) {
        if let Err(e) = fs::write(BPF_STATS_SYSCTL, &self.previous) {
            eprintln!(
                "warning: could not restore {BPF_STATS_SYSCTL} to {}: {e}",
                self.previous
            );
        }
    }
}

/// Cumulative run statistics of one loaded BPF program.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProgStats {
    pub id: u32,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type")]
    pub prog_type: String,
    /// Zero unless `kernel.bpf_stats_enabled` was on while the program ran.
    #[serde(default)]
    pub run_time_ns: u64,
    #[serde(default)]
    pub run_cnt: u64,
}

impl ProgStats {
    /// The counters accumulated since `earlier` (a snapshot of the same program).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_cnt: self.run_cnt.saturating_sub(earlier.run_cnt),
            ..self.clone()
        }
    }

    /// Mean run time per invocation, in nanoseconds.
    pub fn mean_ns(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

/// The loaded programs whose name is one of `names`, from `bpftool prog show --json`.
pub fn bpf_prog_stats(names: &[&str]) -> Result<Vec<ProgStats>> {
    let json = output(Command::new("bpftool").args(["prog", "show", "--json"]))?;
    parse_prog_stats(&json, names)
}

fn parse_prog_stats(json: &str, names: &[&str]) -> Result<Vec<ProgStats>> {
    let progs: Vec<ProgStats> =
        serde_json::from_str(json).context("parsing `bpftool prog show --json`")?;
    Ok(progs
        .into_iter()
        .filter(|p| names.iter().any(|n| prog_name_matches(&p.name, n)))
        .collect())
}

/// The kernel keeps at most 15 bytes of a program's name (`BPF_OBJ_NAME_LEN` - 1), so a long
/// name matches its truncation.
fn prog_name_matches(kernel_name: &str, wanted: &str) -> bool {
    const MAX: usize = 15;
    kernel_name == wanted
        || (kernel_name.len() == MAX
            && wanted.len() > MAX
            && wanted.as_bytes().starts_with(kernel_name.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Markdown tables

/// A Markdown table with padded columns, printed through `Display`.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are left empty, and extra cells are an error in the bench.
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let row: Vec<String> = cells.into_iter().map(Into::into).collect();
        assert!(
            row.len() <= self.headers.len(),
            "table row has {} cells for {} columns",
            row.len(),
            self.headers.len()
        );
        self.rows.push(row);
        self
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let escape = |s: &str| s.replace('|', r"\|");
        let cell = |row: &[String], i: usize| row.get(i).map_or_else(String::new, |c| escape(c));
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| cell(r, i).chars().count())
                    .chain([escape(&self.headers[i]).chars().count(), 3])
                    .max()
                    .unwrap_or(3)
            })
            .collect();
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| {
            write!(f, "|")?;
            for (i, w) in widths.iter().enumerate() {
                write!(f, " {:<w$} |", cell(cells, i))?;
            }
            writeln!(f)
        };
        line(f, &self.headers)?;
        write!(f, "|")?;
        for w in &widths {
            write!(f, " {} |", "-".repeat(*w))?;
        }
        writeln!(f)?;
        for row in &self.rows {
            line(f, row)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_collects_every_run_in_order_and_stops_at_the_first_error() {
        let all = repeat("test", 3, |i| Ok(vec![i * 10, i * 10 + 1])).unwrap();
        assert_eq!(all, [0, 1, 10, 11, 20, 21]);
        let mut ran = vec![];
        let failed = repeat("test", 3, |i| {
            ran.push(i);
            if i == 1 {
                bail!("run {i}")
            } else {
                Ok(vec![i])
            }
        });
        assert_eq!(failed.unwrap_err().to_string(), "run 1");
        assert_eq!(ran, [0, 1]);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!(
            (s.n, s.p50, s.p90, s.p99, s.max),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert!((s.mean - 50.5).abs() < 1e-9);

        let one = Summary::of(&[7.0]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert_eq!(Summary::of(&[]), None);

        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&sorted, 50.0), 2.0);
        assert_eq!(percentile(&sorted, 51.0), 3.0);
        assert_eq!(percentile(&sorted, 100.0), 4.0);
    }

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        // Field 2 holds spaces and a ')'; utime = 1500, stime = 250.
        let stat = "4242 (my (evil) cmd) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1500 250 0 0 20 0 1 0 \
                    12345 1000000 300 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat).unwrap(), 1750);
        assert!(parse_stat_cpu_ticks("4242 (short) S 1 2").is_err());
    }

    #[test]
    fn status_rss_is_read_in_bytes() {
        let status = "Name:\tbpflet\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_bytes(status).unwrap(), 1234 * 1024);
        assert!(parse_status_rss_bytes("Name:\tkthreadd\n").is_err());
    }

    #[test]
    fn own_process_can_be_sampled() {
        let usage = sample_process(
            std::process::id(),
            Duration::from_millis(30),
            Duration::from_millis(10),
        )
        .unwrap();
        assert!(usage.wall >= Duration::from_millis(30));
        assert!(usage.rss_max_bytes > 0 && usage.cpu_seconds >= 0.0);
    }

    #[test]
    fn prog_stats_filter_by_name_and_truncation() {
        let json = r#"[
            {"id": 10, "type": "tracepoint", "name": "sched_process_e", "run_time_ns": 5000, "run_cnt": 10},
            {"id": 11, "type": "tracepoint", "name": "oom_mark_victim"},
            {"id": 12, "type": "cgroup_skb", "name": "other", "run_time_ns": 1, "run_cnt": 1},
            {"id": 13, "type": "kprobe"}
        ]"#;
        let got = parse_prog_stats(json, &["sched_process_exit", "oom_mark_victim"]).unwrap();
        assert_eq!(got.iter().map(|p| p.id).collect::<Vec<_>>(), [10, 11]);
        assert_eq!(got[0].mean_ns(), Some(500.0));
        assert_eq!(got[1].mean_ns(), None);

        let later = ProgStats {
            run_time_ns: 8000,
            run_cnt: 16,
            ..got[0].clone()
        };
        let delta = later.since(&got[0]);
        assert_eq!((delta.run_time_ns, delta.run_cnt), (3000, 6));
    }

    #[test]
    fn table_is_padded_markdown() {
        let mut t = Table::new(["bench", "p50 us"]);
        t.row(["exit|wake", "17"]).row(["oom"]);
        assert_eq!(
            t.to_string(),
            "\
| bench      | p50 us |
| ---------- | ------ |
| exit\\|wake | 17     |
| oom        |        |
"
        );
    }
}
