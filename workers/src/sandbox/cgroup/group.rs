//! A live control group: what the worker reads after every job (limit
//! counters, the number of tasks), freezing and thawing, and removal once
//! its processes are gone.

use std::{
    any::Any,
    fs::{self, File, OpenOptions},
    io::{self, ErrorKind},
    os::{fd::OwnedFd, unix::fs::FileExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// How long a removed group may take to empty after its process was killed.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which freezer interface a group has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::sandbox) enum FreezeFile {
    /// cgroup v1 `freezer.state`: `FROZEN` / `THAWED`.
    V1,
    /// cgroup v2 `cgroup.freeze`: `1` / `0`.
    V2,
}

/// A group being made, one directory per hierarchy; removed again if it is
/// dropped before [`Builder::finish`].
#[derive(Default)]
pub(in crate::sandbox) struct Builder {
    dirs: Vec<PathBuf>,
    oom_file: PathBuf,
    counters: Vec<(Option<File>, Option<&'static str>)>,
    tasks: Option<File>,
    freezer: Option<(File, FreezeFile)>,
}

impl Builder {
    pub(in crate::sandbox) fn make(&mut self, dir: PathBuf) -> io::Result<PathBuf> {
        fs::create_dir(&dir)?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    /// Where the kernel counts OOM kills: `memory.events` or `memory.oom_control`.
    pub(in crate::sandbox) fn oom_file(&mut self, path: PathBuf) {
        self.oom_file = path;
    }

    /// A counter of the times a limit stopped the group: `file` in `dir`
    /// (counted as 0 where the kernel has no such file), and the key of its
    /// line, or `None` for a file holding one number.
    pub(in crate::sandbox) fn counter(
        &mut self,
        dir: &Path,
        file: &str,
        key: Option<&'static str>,
    ) {
        self.counters.push((File::open(dir.join(file)).ok(), key));
    }

    /// The file holding the number of tasks in the group (`pids.current`).
    pub(in crate::sandbox) fn tasks(&mut self, path: &Path) -> io::Result<()> {
        self.tasks = Some(open(path, false)?);
        Ok(())
    }

    pub(in crate::sandbox) fn freezer(&mut self, path: &Path, kind: FreezeFile) -> io::Result<()> {
        self.freezer = Some((open(path, true)?, kind));
        Ok(())
    }

    /// The group, with its open `cgroup.procs` files, which a child writes
    /// `0` to in order to move itself in.
    pub(in crate::sandbox) fn finish(mut self) -> io::Result<(Cgroup, Vec<OwnedFd>)> {
        let procs = self
            .dirs
            .iter()
            .map(|dir| Ok(open(&dir.join("cgroup.procs"), true)?.into()))
            .collect::<io::Result<_>>()?;
        let missing = |what| io::Error::other(format!("a sandbox cgroup without {what}"));
        let group = Cgroup {
            tasks: self.tasks.take().ok_or_else(|| missing("a task count"))?,
            freezer: self.freezer.take().ok_or_else(|| missing("a freezer"))?,
            oom_file: std::mem::take(&mut self.oom_file),
            limit_counters: std::mem::take(&mut self.counters),
            dirs: std::mem::take(&mut self.dirs),
            held: Vec::new(),
        };
        Ok((group, procs))
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// A live control group (one directory per hierarchy); removed on drop,
/// once its processes are gone.
pub(crate) struct Cgroup {
    dirs: Vec<PathBuf>,
    oom_file: PathBuf,
    /// Limit counters, kept open because they are read after every job.
    limit_counters: Vec<(Option<File>, Option<&'static str>)>,
    tasks: File,
    freezer: (File, FreezeFile),
    /// Released once the group is empty (the uid its processes ran as).
    held: Vec<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for Cgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cgroup").field("dirs", &self.dirs).finish()
    }
}

impl Cgroup {
    /// Whether the kernel's OOM killer has killed anything in the group.
    pub(crate) fn oom_killed(&self) -> bool {
        let text = fs::read_to_string(&self.oom_file).unwrap_or_default();
        ["oom_kill", "oom_group_kill"]
            .into_iter()
            .any(|key| counter(&text, Some(key)) > 0)
    }

    /// Whether the group ever ran into its memory or pids limit (an
    /// allocation had to wait for reclaim, a thread could not be created).
    pub(crate) fn limits_reached(&self) -> bool {
        let mut buffer = [0u8; 512];
        self.limit_counters.iter().any(|(file, key)| {
            let n = file.as_ref().map_or(0, |f| read_at_start(f, &mut buffer));
            counter(&String::from_utf8_lossy(&buffer[..n]), *key) > 0
        })
    }

    /// Tasks (processes and threads) in the group now.
    pub(crate) fn tasks(&self) -> u64 {
        let mut buffer = [0u8; 32];
        let n = read_at_start(&self.tasks, &mut buffer);
        counter(&String::from_utf8_lossy(&buffer[..n]), None)
    }

    /// Stops every task of the group where it is; none runs until [`thaw`].
    /// Takes effect at once for a group whose tasks wait in a system call
    /// (a runtime between jobs), shortly after for running ones.
    ///
    /// [`thaw`]: Cgroup::thaw
    pub(crate) fn freeze(&self) -> io::Result<()> {
        self.set_frozen(true)
    }

    pub(crate) fn thaw(&self) -> io::Result<()> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        let (file, kind) = &self.freezer;
        let value: &[u8] = match (kind, frozen) {
            (FreezeFile::V1, true) => b"FROZEN",
            (FreezeFile::V1, false) => b"THAWED",
            (FreezeFile::V2, true) => b"1",
            (FreezeFile::V2, false) => b"0",
        };
        file.write_at(value, 0).map(drop)
    }

    /// Keeps `thing` until the group is empty and removed.
    pub(in crate::sandbox) fn hold_until_empty(&mut self, thing: impl Any + Send) {
        self.held.push(Box::new(thing));
    }

    /// Waits (up to a bound) for the group's processes to be gone, then
    /// removes its directories.
    fn remove(dirs: &[PathBuf]) {
        let deadline = Instant::now() + EMPTY_TIMEOUT;
        for dir in dirs {
            loop {
                match fs::remove_dir(dir) {
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) if e.kind() != ErrorKind::NotFound => {
                        tracing::warn!(dir = %dir.display(), error = %e, "removing a sandbox cgroup");
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Killed tasks die only once thawed.
        let _ = self.thaw();
        self.limit_counters.clear();
        let dirs = std::mem::take(&mut self.dirs);
        let held = std::mem::take(&mut self.held);
        let remove = move || {
            Cgroup::remove(&dirs);
            drop(held);
        };
        // The processes die asynchronously after SIGKILL; wait for them off
        // the async threads.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

fn open(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Reads a counter file from its start (the kernel renders it anew each time).
fn read_at_start(file: &File, buffer: &mut [u8]) -> usize {
    file.read_at(buffer, 0).unwrap_or(0)
}

/// The number in a counter file's `text` (`key: None`) or on its line
/// starting with `key`; 0 when there is none.
fn counter(text: &str, key: Option<&str>) -> u64 {
    let value = match key {
        None => text.trim(),
        Some(key) => text
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(' ')?;
                (name == key).then_some(value)
            })
            .unwrap_or_default(),
    };
    value.trim().parse().unwrap_or(0)
}
