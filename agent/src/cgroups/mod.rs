//! cgroup hierarchies: detection (v1/v2), id <-> path, Kubernetes naming (placeholder).
