//! The OS sandbox around every runtime process the worker starts.
//!
//! A [`Sandbox`] turns a [`ProcessSpec`] into a command that runs the runtime
//! inside bubblewrap (`bwrap`): own user, pid, network, IPC and UTS
//! namespaces (no network at all), only the read-only runtime of the host
//! visible plus a size-limited scratch tmpfs, an empty environment, no
//! capabilities, `no_new_privs`, a seccomp filter against new processes and
//! kernel attack surface, an unprivileged uid of its own (leased from
//! `WORKER_SANDBOX_UID_BASE`.., see [`uids`]; the worker drops to it before
//! starting `bwrap`, so not even an escape is root, and no two sandboxes
//! share a uid) and a control group with memory, pids and CPU limits and a
//! freezer, through which the runtime is stopped between jobs.
//!
//! Two profiles exist: [`Profile::Runtime`] for the warm runtimes, and
//! [`Profile::Compiler`] for `rustc`, which may start processes (its linker)
//! and sees the built crates read-only and its build directory writable.
//!
//! - `bwrap`: the bubblewrap command line.
//! - `seccomp`: the BPF filters.
//! - `cgroup`: per-process control groups, v1 or v2.
//! - `uids`: the uid leases.
//! - `exec`: the steps between fork and exec (the only `unsafe` code).
//!
//! [`Sandbox::disabled`] runs runtimes as plain child processes in a private
//! directory; it exists for development machines without user namespaces.

mod bwrap;
mod cgroup;
mod exec;
mod seccomp;
mod uids;

pub(crate) use exec::kill_process_group;
pub use uids::UidRange;

use crate::supervisor::{resolve_program, ProcessSpec, Supervised};
use std::{
    io::{self, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};
use tokio::process::Command;

/// Most tasks (processes and threads) one runtime sandbox may hold: a
/// runtime's own threads and a few the script starts.
const PIDS_MAX: u32 = 64;
/// Most tasks of the compiler's sandbox: rustc's threads and its linker's.
const COMPILER_PIDS_MAX: u32 = 256;
/// How long the start-up check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The configurable part of the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    /// uids (and gids) sandboxed processes run as, outside their user
    /// namespace, one per process.
    pub uids: UidRange,
    /// Size of the scratch tmpfs at `/tmp`, in MiB.
    pub scratch_mb: u32,
    /// CPU time a process may use per wall-clock time, in thousandths of a
    /// core (1000: one core); 0 sets no quota.
    pub cpu_millis: u32,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            uids: UidRange::default(),
            scratch_mb: 64,
            cpu_millis: 1000,
        }
    }
}

/// Whether, and how, runtime processes are confined; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sandbox {
    settings: Option<Arc<SandboxSettings>>,
}

/// What a sandboxed process is for.
#[derive(Debug, Clone, Default)]
pub(crate) enum Profile {
    /// A warm runtime: threads but no processes, only the host's runtime
    /// files, a scratch `/tmp`.
    #[default]
    Runtime,
    /// The compiler: may start processes (its linker); sees `read_only`
    /// too, and `writable` (its build directory, handed to its uid) as its
    /// working directory.
    Compiler {
        read_only: Vec<PathBuf>,
        writable: PathBuf,
    },
}

/// Why the sandbox cannot run processes here.
#[derive(Debug, thiserror::Error)]
#[error("the runtime sandbox does not work on this machine: {0} (WORKER_SANDBOX=off runs scripts unconfined, for development only)")]
pub struct SandboxError(String);

impl Default for Sandbox {
    /// On, with the default settings.
    fn default() -> Self {
        Self::new(SandboxSettings::default())
    }
}

impl Sandbox {
    /// A sandbox with `settings`. What the machine offers is examined on
    /// first use; [`Sandbox::check`] does that up front.
    pub fn new(settings: SandboxSettings) -> Self {
        Self {
            settings: Some(Arc::new(settings)),
        }
    }

    /// No sandbox: runtimes are plain child processes (development only).
    pub fn disabled() -> Self {
        Self { settings: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.settings.is_some()
    }

    /// Starts a trivial sandboxed process and expects it to succeed.
    pub async fn check(&self) -> Result<(), SandboxError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let spec = ProcessSpec {
            program: resolve_program("true").map_err(|e| SandboxError(e.to_string()))?,
            args: Vec::new(),
            label: "sandbox-check",
            memory_mb: 16,
            sandbox: self.clone(),
            profile: Profile::Runtime,
        };
        let (mut process, _pipes) =
            Supervised::spawn(&spec).map_err(|e| SandboxError(e.to_string()))?;
        let ending = process.wait_or_kill(CHECK_TIMEOUT).await;
        match ending.status {
            Some(status) if status.success() => Ok(()),
            _ => Err(SandboxError(format!(
                "a sandboxed `true` failed ({}): {}",
                ending.describe(),
                ending.stderr_tail.trim()
            ))),
        }
    }

    /// The command that starts `spec`, and what confines it.
    pub(crate) fn prepare(&self, spec: &ProcessSpec) -> io::Result<(Command, Confinement)> {
        let Some(settings) = &self.settings else {
            return unconfined(spec);
        };
        let host = Host::get(settings).map_err(|e| io::Error::other(e.clone()))?;
        let program = host.fs.locate(&spec.program)?;
        let lease = match &host.uids {
            Some(uids) => Some(uids.lease()?),
            None => None,
        };
        let switch_to = lease.as_ref().map(|lease| (lease.uid, lease.uid));
        let scratch_bytes = u64::from(settings.scratch_mb) << 20;
        let compiler = matches!(spec.profile, Profile::Compiler { .. });
        let limits = cgroup::Limits {
            // The scratch tmpfs is charged to the process writing it.
            memory_bytes: (u64::from(spec.memory_mb) << 20) + scratch_bytes,
            pids: if compiler {
                COMPILER_PIDS_MAX
            } else {
                PIDS_MAX
            },
            cpu_millis: settings.cpu_millis,
        };
        let (mut cgroup, cgroup_procs) = host.layout.create(limits)?;
        let mut extra = Vec::new();
        let mut workdir = Path::new("/tmp");
        if let Profile::Compiler {
            read_only,
            writable,
        } = &spec.profile
        {
            if let Some((uid, gid)) = switch_to {
                std::os::unix::fs::chown(writable, Some(uid), Some(gid))?;
            }
            for dir in read_only {
                extra.extend(["--ro-bind".into(), dir.into(), dir.into()]);
            }
            extra.extend(["--bind".into(), writable.into(), writable.into()]);
            workdir = writable;
        }
        // The uid is free again once no process of this sandbox is left.
        if let Some(lease) = lease {
            cgroup.hold_until_empty(lease);
        }
        let seccomp = if compiler {
            &host.seccomp_compiler
        } else {
            &host.seccomp
        };
        let inherit = seccomp
            .iter()
            .map(|program| readable(program))
            .collect::<io::Result<Vec<_>>>()?;
        let fds: Vec<_> = inherit.iter().map(AsRawFd::as_raw_fd).collect();

        let mut command = Command::new(&host.bwrap);
        command
            .args(bwrap::arguments(
                &host.fs,
                scratch_bytes,
                &fds,
                &extra,
                workdir,
                &program,
                &spec.args,
            ))
            .env_clear()
            .process_group(0);
        exec::install(
            &mut command,
            exec::ChildSetup {
                cgroup_procs,
                inherit,
                switch_to,
            },
        );
        Ok((command, Confinement::Sandboxed(cgroup)))
    }
}

/// What confines a started process; released when dropped.
#[derive(Debug)]
pub(crate) enum Confinement {
    Sandboxed(cgroup::Cgroup),
    /// An unconfined process, with its private working directory (removed
    /// on drop).
    Unconfined {
        _scratch: ScratchDir,
    },
}

impl Confinement {
    /// Whether the kernel killed the process for exceeding its memory limit.
    pub(crate) fn oom_killed(&self) -> bool {
        match self {
            Self::Sandboxed(cgroup) => cgroup.oom_killed(),
            Self::Unconfined { .. } => false,
        }
    }

    /// The cgroup of a sandboxed process.
    pub(crate) fn cgroup(&self) -> Option<&cgroup::Cgroup> {
        match self {
            Self::Sandboxed(cgroup) => Some(cgroup),
            Self::Unconfined { .. } => None,
        }
    }

    /// Whether the process ever ran into its memory or pids limit; such a
    /// process may carry leftovers of the script (threads, buffers) and
    /// should not run another job.
    pub(crate) fn limits_reached(&self) -> bool {
        match self {
            Self::Sandboxed(cgroup) => cgroup.limits_reached(),
            Self::Unconfined { .. } => false,
        }
    }
}

/// A directory removed on drop.
#[derive(Debug)]
pub(crate) struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unconfined(spec: &ProcessSpec) -> io::Result<(Command, Confinement)> {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "lambda-worker-{}-{}-{n}",
        std::process::id(),
        spec.label
    ));
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::create_dir_all(&dir)?;
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .current_dir(&dir)
        // Its own process group, so that a signal meant for the worker
        // (Ctrl-C in a terminal) does not reach the runtimes directly.
        .process_group(0);
    Ok((
        command,
        Confinement::Unconfined {
            _scratch: ScratchDir(dir),
        },
    ))
}

/// A descriptor from which `bytes` can be read once, up to end of file.
fn readable(bytes: &[u8]) -> io::Result<std::os::fd::OwnedFd> {
    let (mut writer, reader) = UnixStream::pair()?;
    writer.write_all(bytes)?;
    drop(writer);
    Ok(reader.into())
}

/// What this machine offers the sandbox, examined once per process.
struct Host {
    bwrap: PathBuf,
    fs: bwrap::RuntimeFs,
    layout: cgroup::Layout,
    /// The filters of runtimes, and of the compiler (which may fork).
    seccomp: Vec<Vec<u8>>,
    seccomp_compiler: Vec<Vec<u8>>,
    /// `None` when the worker is not root: every sandbox then runs as the
    /// worker's own uid.
    uids: Option<uids::UidPool>,
}

impl Host {
    /// The host, examined with the settings of the first sandbox used (a
    /// worker has one).
    fn get(settings: &SandboxSettings) -> Result<&'static Host, &'static String> {
        static HOST: OnceLock<Result<Host, String>> = OnceLock::new();
        HOST.get_or_init(|| Self::examine(settings)).as_ref()
    }

    fn examine(settings: &SandboxSettings) -> Result<Self, String> {
        let bwrap = resolve_program("bwrap")
            .map_err(|_| "bubblewrap is not installed (apt-get install bubblewrap)".to_owned())?;
        let fs = bwrap::RuntimeFs::of_host().map_err(|e| format!("runtime directories: {e}"))?;
        let layout = cgroup::Layout::detect()?;
        if settings.cpu_millis > 0 && !layout.has_cpu() {
            return Err("the cpu cgroup controller is not available to the worker \
                        (WORKER_CPU_LIMIT=0 runs runtimes without a CPU quota)"
                .to_owned());
        }
        let seccomp = seccomp::programs(false).map_err(|e| format!("seccomp filter: {e}"))?;
        let seccomp_compiler =
            seccomp::programs(true).map_err(|e| format!("seccomp filter: {e}"))?;
        let uids = if exec::current_uid() == 0 {
            settings.uids.check()?;
            Some(uids::UidPool::new(settings.uids).map_err(|e| format!("uid leases: {e}"))?)
        } else {
            tracing::warn!(
                uid = exec::current_uid(),
                "the worker is not root: every sandboxed process runs as the worker's uid"
            );
            None
        };
        tracing::info!(?layout, "runtime sandbox: bubblewrap, seccomp, cgroups");
        Ok(Self {
            bwrap,
            fs,
            layout,
            seccomp,
            seccomp_compiler,
            uids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn works_here() {
        Sandbox::default().check().await.unwrap();
        Sandbox::disabled().check().await.unwrap();
    }
}
