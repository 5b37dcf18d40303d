//! Network namespaces for tests (filled in below).

pub fn sweep_stale() {}
