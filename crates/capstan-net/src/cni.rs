//! CNI plugin invocation (filled in by the networking work of issue 5).
