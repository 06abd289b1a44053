//! A uid of its own for every sandboxed process.
//!
//! Two runtime processes, or a runtime and the compiler, never run as the
//! same uid at the same time: whatever one might reach despite its
//! namespaces (a signal, a file it created, a `/proc` entry) belongs to a uid
//! no other sandbox holds. The worker leases uids from a range with an
//! advisory lock on a file per uid under [`LEASE_DIR`], so several workers on
//! one machine never hand out the same uid either; a lease ends when the
//! last process of the sandbox is gone (the cgroup is empty), and the file
//! stays for the next lease (removing it would race with another worker).

use std::{
    fs::{self, File, OpenOptions, TryLockError},
    io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// Where leases are kept: on a tmpfs, so a reboot forgets them.
pub(crate) const LEASE_DIR: &str = "/run/lambda-sandbox/uids";

/// The uids sandboxed processes run as, outside their user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub count: u32,
}

impl Default for UidRange {
    /// Far above the uids of real users and of the usual subordinate ranges.
    fn default() -> Self {
        Self {
            first: 2_000_000_000,
            count: 4096,
        }
    }
}

impl UidRange {
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.first == 0 || self.count == 0 {
            return Err("WORKER_SANDBOX_UID_BASE and WORKER_SANDBOX_UID_COUNT must be positive (uid 0 is root)".into());
        }
        if self.first.checked_add(self.count).is_none() {
            return Err(
                "WORKER_SANDBOX_UID_BASE + WORKER_SANDBOX_UID_COUNT exceeds the uid space".into(),
            );
        }
        Ok(())
    }
}

/// One uid, held until dropped.
#[derive(Debug)]
pub(crate) struct UidLease {
    pub(crate) uid: u32,
    _lock: File,
}

/// Hands out the uids of a range, to this worker's sandboxes and, through
/// the lock files, not to another worker's.
#[derive(Debug)]
pub(crate) struct UidPool {
    range: UidRange,
    dir: PathBuf,
    /// Where the next search starts, so that a uid just released is the
    /// last to be leased again.
    next: AtomicU32,
}

impl UidPool {
    pub(crate) fn new(range: UidRange) -> io::Result<Self> {
        range.check().map_err(io::Error::other)?;
        Self::in_dir(range, Path::new(LEASE_DIR))
    }

    fn in_dir(range: UidRange, dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        Ok(Self {
            range,
            dir: dir.to_owned(),
            next: AtomicU32::new(std::process::id() % range.count),
        })
    }

    /// A uid no other sandbox holds now.
    pub(crate) fn lease(&self) -> io::Result<UidLease> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for step in 0..self.range.count {
            let uid = self.range.first + (start.wrapping_add(step) % self.range.count);
            let path = self.dir.join(uid.to_string());
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            match file.try_lock() {
                Ok(()) => {
                    self.next
                        .store(start.wrapping_add(step + 1), Ordering::Relaxed);
                    return Ok(UidLease { uid, _lock: file });
                }
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "all {} sandbox uids from {} are in use (raise WORKER_SANDBOX_UID_COUNT)",
            self.range.count, self.range.first
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_exclusive_until_released() {
        let dir = std::env::temp_dir().join(format!("uid-leases-{}", std::process::id()));
        let range = UidRange {
            first: 5000,
            count: 3,
        };
        let pool = UidPool::in_dir(range, &dir).unwrap();
        // Another worker on the same machine: the same files, its own locks.
        let other = UidPool::in_dir(range, &dir).unwrap();
        let a = pool.lease().unwrap();
        let b = other.lease().unwrap();
        let c = pool.lease().unwrap();
        let mut uids = vec![a.uid, b.uid, c.uid];
        uids.sort_unstable();
        assert_eq!(uids, [5000, 5001, 5002]);
        let error = other.lease().unwrap_err().to_string();
        assert!(error.contains("WORKER_SANDBOX_UID_COUNT"), "{error}");
        let freed = b.uid;
        drop(b);
        assert_eq!(pool.lease().unwrap().uid, freed);
        fs::remove_dir_all(&dir).unwrap();
        assert!(UidRange { first: 0, count: 1 }.check().is_err());
        assert!(UidRange {
            first: u32::MAX,
            count: 2
        }
        .check()
        .is_err());
    }
}
