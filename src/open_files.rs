//! The process's open-file limit. Every connection holds a socket, and the soft limit many
//! systems start a process with (1024) is far below what one hub serves, so the hub raises its
//! soft limit to the hard limit at start, as most servers do.

/// Raises the soft limit on open files to the hard limit; returns the limit now in force.
pub fn raise_to_hard_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit that only raises the soft limit up to the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let now = super::raise_to_hard_limit().expect("rlimit");
        assert_eq!(super::raise_to_hard_limit().expect("rlimit"), now);
        assert!(now >= 1);
    }
}
