//! Secrets encrypted at rest end to end: raw store values hold no plaintext; key rotation.
