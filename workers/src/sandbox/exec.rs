//! What the forked child does between `fork` and `exec` of the sandbox
//! launcher, while it is still the worker's (root) process: move into its
//! control groups, forbid core dumps, keep the seccomp descriptors open across
//! `exec`, drop to the sandbox uid and gid with no supplementary groups (and
//! with that, every capability), and set `no_new_privs`.
//!
//! This is the only place in the crate with `unsafe` code: `pre_exec` and the
//! raw system calls it makes.
#![allow(unsafe_code)]

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};
use tokio::process::Command;

/// The steps the child takes before `exec`.
pub(super) struct ChildSetup {
    /// Open `cgroup.procs` files of the groups to join.
    pub(super) cgroup_procs: Vec<OwnedFd>,
    /// Descriptors the launcher reads after `exec` (seccomp programs); open
    /// in the parent until the command is dropped.
    pub(super) inherit: Vec<OwnedFd>,
    /// `(uid, gid)` to switch to, when the worker runs as root.
    pub(super) switch_to: Option<(u32, u32)>,
}

/// Installs `setup` to run in the child of `command`.
pub(super) fn install(command: &mut Command, setup: ChildSetup) {
    let ChildSetup {
        cgroup_procs,
        inherit,
        switch_to,
    } = setup;
    let child = move || -> io::Result<()> {
        let check = |result: libc::c_int| {
            if result == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: every call below is a plain system call on memory owned by
        // this closure or on constants; none allocates or takes a lock, so
        // they are safe between fork and exec (async-signal-safe).
        unsafe {
            for procs in &cgroup_procs {
                let written = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if written != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            check(libc::setrlimit(libc::RLIMIT_CORE, &no_core))?;
            for fd in inherit.iter().map(AsRawFd::as_raw_fd) {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                check(flags)?;
                check(libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC))?;
            }
            if let Some((uid, gid)) = switch_to {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(gid, gid, gid))?;
                check(libc::setresuid(uid, uid, uid))?;
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe system calls (see above).
    unsafe {
        command.pre_exec(child);
    }
}

/// The worker's real uid.
pub(super) fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Sends SIGKILL to every process of process group `pgid`.
pub(crate) fn kill_process_group(pgid: u32) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a process group",
        ));
    }
    // SAFETY: kill has no memory-safety preconditions; a negative pid names a
    // process group, and pgid > 1 rules out "every process" (-1).
    if unsafe { libc::kill(-pgid, libc::SIGKILL) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
