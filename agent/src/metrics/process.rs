//! Figures of the agent's own process, for logs at load milestones.

/// The process's resident memory in MiB (`/proc/self/statm`).
pub fn resident_mib() -> f64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    (pages * page) as f64 / (1024.0 * 1024.0)
}
