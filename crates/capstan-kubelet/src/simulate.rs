//! Simulated nodes (the kwok role).
