//! Admission end to end: Pod Security, LimitRange, ResourceQuota, DefaultTolerationSeconds, Priority.
