//! One control group per sandboxed process, for what namespaces cannot give:
//! memory (including swap and the scratch tmpfs, which is charged to its
//! writer), the number of tasks (processes and threads), a CPU quota, and
//! freezing: a runtime process is frozen whenever it runs no job, so nothing
//! a script left behind (a timer, a thread) runs between jobs.
//!
//! Both layouts are supported and detected once: cgroup v2 (the unified
//! hierarchy, with the `memory` and `pids` controllers, and `cpu` for a
//! quota, available to the worker's own group; freezing is built in) and
//! cgroup v1 (separate `memory`, `pids`, `freezer` and `cpu` hierarchies).
//! Groups are created under the worker's own groups, named
//! `lambda-sandbox-<worker pid>-<n>`, and removed once their processes are gone.
//!
//! - `group`: a live group and what the worker reads and writes in it.

mod group;

pub(crate) use group::Cgroup;

use std::{
    fs,
    io::{self, ErrorKind},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

const PREFIX: &str = "lambda-sandbox-";
/// The CFS period a CPU quota is expressed in, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// Where the worker may create control groups.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Layout {
    /// The worker's own v2 group, with memory and pids (and maybe cpu)
    /// enabled for children.
    V2 { parent: PathBuf, cpu: bool },
    /// The worker's own groups in the v1 hierarchies.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        freezer: PathBuf,
        cpu: Option<PathBuf>,
    },
}

/// The limits of one group.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) memory_bytes: u64,
    pub(super) pids: u32,
    /// CPU time per wall-clock time, in thousandths of a core; 0: no quota.
    pub(super) cpu_millis: u32,
}

impl Layout {
    /// Finds the layout from `/proc/self/cgroup` and `/proc/self/mountinfo`,
    /// prepares it (v2: enables the controllers for child groups; v1: keeps
    /// one empty group frozen, see [`keep_freezer_active`]) and removes
    /// groups left behind by workers that are gone.
    pub(super) fn detect() -> Result<Self, String> {
        let read = |path: &str| fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
        let layout = Self::parse(&read("/proc/self/cgroup")?, &read("/proc/self/mountinfo")?)?;
        for dir in layout.parents() {
            remove_stale(dir);
        }
        match &layout {
            Self::V2 { parent, cpu } => enable_v2_controllers(parent, *cpu)?,
            Self::V1 { freezer, .. } => keep_freezer_active(freezer)?,
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
            (has("memory") && has("pids")).then(|| (dir, has("cpu")))
        });
        if let Some((parent, cpu)) = v2 {
            return Ok(Self::V2 { parent, cpu });
        }
        let v1 = |controller: &str| {
            let mount = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == controller))?;
            mount.locate(own(Some(controller))?)
        };
        match (v1("memory"), v1("pids"), v1("freezer")) {
            (Some(memory), Some(pids), Some(freezer)) => Ok(Self::V1 {
                memory,
                pids,
                freezer,
                cpu: v1("cpu"),
            }),
            _ => Err(
                "no cgroup with the memory and pids controllers (and, on cgroup v1, the \
                 freezer) is available to the worker (cgroup v2 with both controllers \
                 delegated, or cgroup v1 with those hierarchies mounted)"
                    .to_owned(),
            ),
        }
    }

    fn parents(&self) -> Vec<&Path> {
        match self {
            Self::V2 { parent, .. } => vec![parent],
            Self::V1 {
                memory,
                pids,
                freezer,
                cpu,
            } => [Some(memory), Some(pids), Some(freezer), cpu.as_ref()]
                .into_iter()
                .flatten()
                .map(PathBuf::as_path)
                .collect(),
        }
    }

    /// Whether groups can be given a CPU quota here.
    pub(super) fn has_cpu(&self) -> bool {
        match self {
            Self::V2 { cpu, .. } => *cpu,
            Self::V1 { cpu, .. } => cpu.is_some(),
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
        let quota_us = u64::from(limits.cpu_millis) * CPU_PERIOD_US / 1000;
        let mut group = group::Builder::default();
        match self {
            Self::V2 { parent, .. } => {
                let dir = group.make(parent.join(&name))?;
                write(&dir, "memory.max", &limits.memory_bytes.to_string())?;
                write_if_present(&dir, "memory.swap.max", "0")?;
                // An OOM kill takes the whole sandbox, not one of its threads' processes.
                write_if_present(&dir, "memory.oom.group", "1")?;
                write(&dir, "pids.max", &limits.pids.to_string())?;
                if quota_us > 0 {
                    write(&dir, "cpu.max", &format!("{quota_us} {CPU_PERIOD_US}"))?;
                }
                group.oom_file(dir.join("memory.events"));
                group.counter(&dir, "memory.events", Some("max"));
                group.counter(&dir, "pids.events", Some("max"));
                group.tasks(&dir.join("pids.current"))?;
                group.freezer(&dir.join("cgroup.freeze"), group::FreezeFile::V2)?;
            }
            Self::V1 {
                memory,
                pids,
                freezer,
                cpu,
            } => {
                let bytes = limits.memory_bytes.to_string();
                let dir = group.make(memory.join(&name))?;
                write(&dir, "memory.limit_in_bytes", &bytes)?;
                write_if_present(&dir, "memory.memsw.limit_in_bytes", &bytes)?;
                group.oom_file(dir.join("memory.oom_control"));
                group.counter(&dir, "memory.failcnt", None);
                let dir = group.make(pids.join(&name))?;
                write(&dir, "pids.max", &limits.pids.to_string())?;
                group.counter(&dir, "pids.events", Some("max"));
                group.tasks(&dir.join("pids.current"))?;
                let dir = group.make(freezer.join(&name))?;
                group.freezer(&dir.join("freezer.state"), group::FreezeFile::V1)?;
                if let (Some(cpu), true) = (cpu, quota_us > 0) {
                    let dir = group.make(cpu.join(&name))?;
                    write(&dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                    write(&dir, "cpu.cfs_quota_us", &quota_us.to_string())?;
                }
            }
        }
        group.finish()
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
fn enable_v2_controllers(parent: &Path, cpu: bool) -> Result<(), String> {
    let enabled = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    let on = |name| enabled.split_whitespace().any(|c| c == name);
    if on("memory") && on("pids") && (!cpu || on("cpu")) {
        return Ok(());
    }
    let leaf = parent.join("lambda-worker");
    let context = |e: io::Error| {
        format!(
            "enabling the memory, pids and cpu controllers below {}: {e} (delegate that cgroup to the worker)",
            parent.display()
        )
    };
    match fs::create_dir(&leaf) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(context(e)),
        _ => {}
    }
    fs::write(leaf.join("cgroup.procs"), "0").map_err(context)?;
    let controllers = if cpu {
        "+memory +pids +cpu"
    } else {
        "+memory +pids"
    };
    fs::write(parent.join("cgroup.subtree_control"), controllers).map_err(context)
}

/// cgroup v1's freezer switches a kernel static key on when the first group
/// freezes and off when the last one thaws, and that switch costs about
/// 250 µs of CPU each way: a runtime frozen after every job would pay it
/// twice per job. One empty group kept frozen for the worker's lifetime
/// keeps the key on, and a freeze and thaw then cost about 10 µs.
fn keep_freezer_active(freezer: &Path) -> Result<(), String> {
    let anchor = freezer.join(format!("{PREFIX}{}-anchor", std::process::id()));
    match fs::create_dir(&anchor) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => {
            return Err(format!("creating {}: {e}", anchor.display()))
        }
        _ => {}
    }
    fs::write(anchor.join("freezer.state"), "FROZEN")
        .map_err(|e| format!("freezing {}: {e}", anchor.display()))
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
            Ok(Layout::V2 { parent, .. }) => {
                assert!(parent.join("cgroup.controllers").is_file())
            }
            Ok(Layout::V1 {
                memory,
                pids,
                freezer,
                cpu,
            }) => {
                assert!(memory.join("memory.limit_in_bytes").is_file());
                assert!(pids.join("cgroup.procs").is_file());
                assert!(freezer.join("cgroup.procs").is_file());
                if let Some(cpu) = cpu {
                    assert!(cpu.join("cpu.cfs_quota_us").is_file());
                }
            }
            Err(e) => assert!(e.contains("memory and pids"), "{e}"),
        }
    }
}
