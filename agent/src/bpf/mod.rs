//! Loading and attaching the BPF programs; ring buffer -> typed async stream (placeholder).
