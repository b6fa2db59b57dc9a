//! `bpflet trace` (placeholder).
