//! successThreshold / failureThreshold: turning a stream of probe runs into a verdict. Pure.

/// What one run of a probe concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The check passed; the handler's output (truncated), for logs.
    Success(String),
    /// Passed, with something worth a warning (an HTTP redirect to another host, or any
    /// other 3xx that was not followed), as upstream's `Warning` result.
    Warning(String),
    /// The check failed: the message operators see (`HTTP probe failed with statuscode: 500`).
    Failure(String),
    /// The probe could not be run (a runtime error, an unresolvable port). Upstream throws
    /// such results away: they move no counter and change no verdict.
    Error(String),
}

impl Outcome {
    /// `successful`, `failed` or `unknown`: the `result` label of `prober_probe_total`.
    #[must_use]
    pub const fn metric_result(&self) -> &'static str {
        match self {
            Self::Success(_) | Self::Warning(_) => "successful",
            Self::Failure(_) => "failed",
            Self::Error(_) => "unknown",
        }
    }

    /// `Some(true)` for a pass, `Some(false)` for a failure, `None` for a discarded run.
    #[must_use]
    pub const fn passed(&self) -> Option<bool> {
        match self {
            Self::Success(_) | Self::Warning(_) => Some(true),
            Self::Failure(_) => Some(false),
            Self::Error(_) => None,
        }
    }
}

/// Consecutive results of one probe and the verdict they support.
///
/// The verdict starts unknown (`None`) and changes only when `success_threshold`
/// consecutive passes or `failure_threshold` consecutive failures are seen; a run that
/// agrees with the verdict keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    last: Option<bool>,
    run: u32,
    verdict: Option<bool>,
}

impl Tracker {
    /// Thresholds below 1 count as 1.
    #[must_use]
    pub fn new(success_threshold: u32, failure_threshold: u32) -> Self {
        Self {
            success_threshold: success_threshold.max(1),
            failure_threshold: failure_threshold.max(1),
            last: None,
            run: 0,
            verdict: None,
        }
    }

    #[must_use]
    pub const fn verdict(&self) -> Option<bool> {
        self.verdict
    }

    /// Records one run (`None`: discarded). Returns the new verdict when it changed.
    pub fn record(&mut self, passed: Option<bool>) -> Option<bool> {
        let passed = passed?;
        if self.last == Some(passed) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(passed);
            self.run = 1;
        }
        let threshold = if passed {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < threshold || self.verdict == Some(passed) {
            return None;
        }
        self.verdict = Some(passed);
        Some(passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `runs` (`'+'` pass, `'-'` fail, `'?'` discarded) and returns the verdict after
    /// each, as `'+'`, `'-'` or `'.'` (unknown).
    fn trace(success: u32, failure: u32, runs: &str) -> String {
        let mut t = Tracker::new(success, failure);
        runs.chars()
            .map(|c| {
                let passed = match c {
                    '+' => Some(true),
                    '-' => Some(false),
                    _ => None,
                };
                t.record(passed);
                match t.verdict() {
                    Some(true) => '+',
                    Some(false) => '-',
                    None => '.',
                }
            })
            .collect()
    }

    #[test]
    fn thresholds_table() {
        let cases = [
            // (success, failure, runs, verdicts)
            (1, 3, "+", "+"),
            (1, 3, "--", ".."),
            (1, 3, "---", "..-"),
            (1, 3, "+--+---", "++++++-"),
            (1, 3, "---+", "..-+"),
            (1, 1, "-+-", "-+-"),
            (2, 1, "+-++", ".--+"),
            (3, 2, "++-++++--", ".....+++-"),
            // Discarded runs neither count nor break a streak.
            (1, 3, "-?-?-", "....-"),
            (2, 3, "+?+", "..+"),
        ];
        for (success, failure, runs, want) in cases {
            assert_eq!(
                trace(success, failure, runs),
                want,
                "success={success} failure={failure} runs={runs}"
            );
        }
    }

    #[test]
    fn record_reports_only_changes() {
        let mut t = Tracker::new(1, 2);
        assert_eq!(t.record(Some(true)), Some(true));
        assert_eq!(t.record(Some(true)), None);
        assert_eq!(t.record(Some(false)), None);
        assert_eq!(t.record(Some(false)), Some(false));
        assert_eq!(t.record(Some(false)), None);
        assert_eq!(t.record(None), None);
        assert_eq!(t.record(Some(true)), Some(true));
    }

    #[test]
    fn zero_thresholds_behave_as_one() {
        assert_eq!(trace(0, 0, "+-"), "+-");
    }

    #[test]
    fn metric_results_are_upstream_values() {
        assert_eq!(
            Outcome::Success(String::new()).metric_result(),
            "successful"
        );
        assert_eq!(
            Outcome::Warning(String::new()).metric_result(),
            "successful"
        );
        assert_eq!(Outcome::Failure(String::new()).metric_result(), "failed");
        assert_eq!(Outcome::Error(String::new()).metric_result(), "unknown");
    }
}
