//! Polling fallback source (owned by the cgroups/fallback work; placeholder).
