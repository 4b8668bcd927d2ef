//! `capstan-scheduler` places pods on nodes (filled in by issue 6).
