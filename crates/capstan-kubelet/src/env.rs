//! Container environment: env, envFrom, valueFrom, `$(VAR)` expansion.
