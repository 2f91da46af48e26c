//! The rlimits a worker runs under. The address-space limit is set between fork and exec
//! (it holds for the worker's whole life); the CPU limit is moved forward by the worker
//! itself before each object, since RLIMIT_CPU counts the process's whole life and the
//! worker is reused.

use std::io;

fn set_limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else; it is async-signal-safe,
    // so it may run between fork and exec.
    if unsafe { libc::setrlimit(resource, &limit) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_limit(resource: libc::__rlimit_resource_t) -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(resource, &mut limit) } == 0 {
        Ok(limit)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// In the child, before exec: at most `memory_bytes` of address space, and no core dumps
/// (a crashing worker must not fill the disk).
pub(super) fn apply_in_child(memory_bytes: u64) -> io::Result<()> {
    set_limit(libc::RLIMIT_AS, memory_bytes, memory_bytes)?;
    set_limit(libc::RLIMIT_CORE, 0, 0)
}

/// In the worker, before each object: the kernel sends SIGXCPU once this object has used
/// `seconds` of CPU time (the soft limit); the hard limit stays where it was.
pub(super) fn limit_cpu_for_next_object(seconds: u64) -> io::Result<()> {
    // SAFETY: getrusage writes into the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let used_seconds = (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) as u64 + 1;
    let hard = get_limit(libc::RLIMIT_CPU)?.rlim_max as u64;
    let soft = used_seconds.saturating_add(seconds).min(hard);
    set_limit(libc::RLIMIT_CPU, soft, hard)
}
