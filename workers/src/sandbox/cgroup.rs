//! One control group per sandboxed process, for the limits namespaces cannot
//! give: memory (including swap and the scratch tmpfs, which is charged to
//! its writer) and the number of tasks (processes and threads).
//!
//! Both layouts are supported and detected once: cgroup v2 (the unified
//! hierarchy, with the `memory` and `pids` controllers available to the
//! worker's own group) and cgroup v1 (separate `memory` and `pids`
//! hierarchies). Groups are created under the worker's own group, named
//! `lambda-sandbox-<worker pid>-<n>`, and removed once their process is gone.

use std::{
    fs,
    io::{self, ErrorKind},
    os::{fd::OwnedFd, unix::fs::FileExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

const PREFIX: &str = "lambda-sandbox-";
/// How long a removed group may take to empty after its process was killed.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the worker may create control groups.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Layout {
    /// The worker's own v2 group, with memory and pids enabled for children.
    V2 { parent: PathBuf },
    /// The worker's own groups in the v1 memory and pids hierarchies.
    V1 { memory: PathBuf, pids: PathBuf },
}

/// The limits of one group.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) memory_bytes: u64,
    pub(super) pids: u32,
}

/// A live control group (one directory per hierarchy); removed on drop.
#[derive(Debug)]
pub(crate) struct Cgroup {
    dirs: Vec<PathBuf>,
    /// Where the kernel counts OOM kills: `memory.events` or `memory.oom_control`.
    oom_file: PathBuf,
    /// Counters of the times a limit stopped the group: a file, kept open
    /// because it is read after every job (`None` where the kernel has no
    /// such file: it counts as 0), and the key of its line, or `None` for a
    /// file holding one number.
    limit_counters: Vec<(Option<fs::File>, Option<&'static str>)>,
}

impl Layout {
    /// Finds the layout from `/proc/self/cgroup` and `/proc/self/mountinfo`,
    /// prepares it (v2: enables the controllers for child groups) and
    /// removes groups left behind by workers that are gone.
    pub(super) fn detect() -> Result<Self, String> {
        let read = |path: &str| fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
        let layout = Self::parse(&read("/proc/self/cgroup")?, &read("/proc/self/mountinfo")?)?;
        if let Self::V2 { parent } = &layout {
            enable_v2_controllers(parent)?;
        }
        for dir in layout.parents() {
            remove_stale(dir);
        }
        Ok(layout)
    }

    fn parse(cgroup: &str, mountinfo: &str) -> Result<Self, String> {
        let mounts: Vec<Mount> = mountinfo.lines().filter_map(Mount::parse).collect();
        let own = |controller: Option<&str>| {
            cgroup.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                let wanted = match controller {
                    None => controllers.is_empty(),
                    Some(name) => controllers.split(',').any(|c| c == name),
                };
                wanted.then_some(path)
            })
        };
        let v2 = own(None).and_then(|path| {
            let mount = mounts.iter().find(|m| m.fstype == "cgroup2")?;
            let dir = mount.locate(path)?;
            let controllers = fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
            let has = |name| controllers.split_whitespace().any(|c| c == name);
            (has("memory") && has("pids")).then_some(dir)
        });
        if let Some(parent) = v2 {
            return Ok(Self::V2 { parent });
        }
        let v1 = |controller: &str| {
            let mount = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == controller))?;
            mount.locate(own(Some(controller))?)
        };
        match (v1("memory"), v1("pids")) {
            (Some(memory), Some(pids)) => Ok(Self::V1 { memory, pids }),
            _ => Err(
                "no cgroup with the memory and pids controllers is available to the \
                      worker (cgroup v2 with both controllers delegated, or cgroup v1 with \
                      both hierarchies mounted)"
                    .to_owned(),
            ),
        }
    }

    fn parents(&self) -> Vec<&Path> {
        match self {
            Self::V2 { parent } => vec![parent],
            Self::V1 { memory, pids } => vec![memory, pids],
        }
    }

    /// Creates a group with `limits`; returns it with its open `cgroup.procs`
    /// files, which a child writes `0` to in order to move itself in.
    pub(super) fn create(&self, limits: Limits) -> io::Result<(Cgroup, Vec<OwnedFd>)> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let memory = limits.memory_bytes.to_string();
        let pids = limits.pids.to_string();
        let mut group = Cgroup {
            dirs: Vec::new(),
            oom_file: PathBuf::new(),
            limit_counters: Vec::new(),
        };
        match self {
            Self::V2 { parent } => {
                let dir = group.make(parent.join(&name))?;
                write(&dir, "memory.max", &memory)?;
                write_if_present(&dir, "memory.swap.max", "0")?;
                // An OOM kill takes the whole sandbox, not one of its threads' processes.
                write_if_present(&dir, "memory.oom.group", "1")?;
                write(&dir, "pids.max", &pids)?;
                group.oom_file = dir.join("memory.events");
                group.limit_counters = vec![
                    (open_counter(&dir, "memory.events"), Some("max")),
                    (open_counter(&dir, "pids.events"), Some("max")),
                ];
            }
            Self::V1 {
                memory: root,
                pids: pids_root,
            } => {
                let dir = group.make(root.join(&name))?;
                write(&dir, "memory.limit_in_bytes", &memory)?;
                write_if_present(&dir, "memory.memsw.limit_in_bytes", &memory)?;
                group.oom_file = dir.join("memory.oom_control");
                group.limit_counters = vec![(open_counter(&dir, "memory.failcnt"), None)];
                let dir = group.make(pids_root.join(&name))?;
                write(&dir, "pids.max", &pids)?;
                group
                    .limit_counters
                    .push((open_counter(&dir, "pids.events"), Some("max")));
            }
        }
        let procs = group
            .dirs
            .iter()
            .map(|dir| {
                Ok(fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))?
                    .into())
            })
            .collect::<io::Result<_>>()?;
        Ok((group, procs))
    }
}

impl Cgroup {
    fn make(&mut self, dir: PathBuf) -> io::Result<PathBuf> {
        fs::create_dir(&dir)?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    /// Whether the kernel's OOM killer has killed anything in the group.
    pub(super) fn oom_killed(&self) -> bool {
        let text = fs::read_to_string(&self.oom_file).unwrap_or_default();
        ["oom_kill", "oom_group_kill"]
            .into_iter()
            .any(|key| counter(&text, Some(key)) > 0)
    }

    /// Whether the group ever ran into its memory or pids limit (an
    /// allocation had to wait for reclaim, a thread could not be created).
    pub(super) fn limits_reached(&self) -> bool {
        let mut buffer = [0u8; 512];
        self.limit_counters.iter().any(|(file, key)| {
            // Read from the start each time: the kernel renders the file anew.
            let n = file
                .as_ref()
                .and_then(|f| f.read_at(&mut buffer, 0).ok())
                .unwrap_or(0);
            counter(&String::from_utf8_lossy(&buffer[..n]), *key) > 0
        })
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
        self.limit_counters.clear();
        let dirs = std::mem::take(&mut self.dirs);
        if dirs.is_empty() {
            return;
        }
        // The processes die asynchronously after SIGKILL; wait for them off
        // the async threads.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || Cgroup::remove(&dirs))),
            Err(_) => Cgroup::remove(&dirs),
        }
    }
}

/// One line of `/proc/self/mountinfo` describing a cgroup file system.
struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    options: String,
}

impl Mount {
    fn parse(line: &str) -> Option<Self> {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let mut after = after.split(' ');
        let fstype = after.next()?;
        if !fstype.starts_with("cgroup") {
            return None;
        }
        Some(Self {
            root: fields.get(3)?.to_string(),
            point: PathBuf::from(fields.get(4)?),
            fstype: fstype.to_owned(),
            options: after.nth(1)?.to_owned(),
        })
    }

    /// The directory of cgroup `path` (as in `/proc/self/cgroup`) in this mount.
    fn locate(&self, path: &str) -> Option<PathBuf> {
        let relative = if self.root == "/" {
            path
        } else {
            path.strip_prefix(self.root.as_str())?
        };
        let dir = self.point.join(relative.trim_start_matches('/'));
        dir.is_dir().then_some(dir)
    }
}

/// cgroup v2 lets a group hand controllers to its children only while it has
/// no processes of its own, so the worker first moves into a leaf group.
fn enable_v2_controllers(parent: &Path) -> Result<(), String> {
    let enabled = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    let on = |name| enabled.split_whitespace().any(|c| c == name);
    if on("memory") && on("pids") {
        return Ok(());
    }
    let leaf = parent.join("lambda-worker");
    let context = |e: io::Error| {
        format!(
            "enabling the memory and pids controllers below {}: {e} (delegate that cgroup to the worker)",
            parent.display()
        )
    };
    match fs::create_dir(&leaf) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(context(e)),
        _ => {}
    }
    fs::write(leaf.join("cgroup.procs"), "0").map_err(context)?;
    fs::write(parent.join("cgroup.subtree_control"), "+memory +pids").map_err(context)
}

/// Removes the empty groups of workers that are no longer running.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(owner).exists() {
            let _ = fs::remove_dir(entry.path());
        }
    }
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

fn open_counter(dir: &Path, file: &str) -> Option<fs::File> {
    fs::File::open(dir.join(file)).ok()
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    fs::write(dir.join(file), value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

fn write_if_present(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    if dir.join(file).exists() {
        write(dir, file, value)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mount_lines() {
        let line =
            "35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory";
        let mount = Mount::parse(line).unwrap();
        assert_eq!(mount.fstype, "cgroup");
        assert_eq!(mount.options, "rw,memory");
        assert_eq!(mount.point, Path::new("/sys/fs/cgroup/memory"));
        let line = "40 25 0:35 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate";
        let mount = Mount::parse(line).unwrap();
        assert_eq!(mount.root, "/docker/abc");
        assert!(Mount::parse("22 1 8:1 / / rw - ext4 /dev/sda1 rw").is_none());
    }

    #[test]
    fn finds_the_layout_of_this_machine() {
        // Whatever this machine has, the answer must point at real directories.
        match Layout::parse(
            &fs::read_to_string("/proc/self/cgroup").unwrap(),
            &fs::read_to_string("/proc/self/mountinfo").unwrap(),
        ) {
            Ok(Layout::V2 { parent }) => assert!(parent.join("cgroup.controllers").is_file()),
            Ok(Layout::V1 { memory, pids }) => {
                assert!(memory.join("memory.limit_in_bytes").is_file());
                assert!(pids.join("cgroup.procs").is_file());
            }
            Err(e) => assert!(e.contains("memory and pids"), "{e}"),
        }
    }
}
