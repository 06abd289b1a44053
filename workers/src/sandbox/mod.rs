//! The OS sandbox around every runtime process the worker starts.
//!
//! A [`Sandbox`] turns a [`ProcessSpec`] into a command that runs the runtime
//! inside bubblewrap (`bwrap`): own user, pid, network, IPC and UTS
//! namespaces (no network at all), only the read-only runtime of the host
//! visible plus a size-limited scratch tmpfs, an empty environment, no
//! capabilities, `no_new_privs`, a seccomp filter against new processes and
//! kernel attack surface, an unprivileged uid (the worker drops to
//! `WORKER_SANDBOX_UID` before starting `bwrap`, so not even an escape is
//! root) and a control group with memory and pids limits.
//!
//! - `bwrap`: the bubblewrap command line.
//! - `seccomp`: the BPF filters.
//! - `cgroup`: per-process control groups, v1 or v2.
//! - `exec`: the steps between fork and exec (the only `unsafe` code).
//!
//! [`Sandbox::disabled`] runs runtimes as plain child processes in a private
//! directory; it exists for development machines without user namespaces.

mod bwrap;
mod cgroup;
mod exec;
mod seccomp;

pub(crate) use exec::kill_process_group;

use crate::supervisor::{resolve_program, ProcessSpec, Supervised};
use std::{
    io::{self, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};
use tokio::process::Command;

/// Most tasks (processes and threads) one sandbox may hold: a runtime's
/// own threads and a few the script starts.
const PIDS_MAX: u32 = 64;
/// How long the start-up check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The configurable part of the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    /// uid (and gid) the runtimes run as, outside their user namespace.
    pub uid: u32,
    /// Size of the scratch tmpfs at `/tmp`, in MiB.
    pub scratch_mb: u32,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            uid: 65534,
            scratch_mb: 64,
        }
    }
}

/// Whether, and how, runtime processes are confined; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sandbox {
    settings: Option<Arc<SandboxSettings>>,
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
        let host = Host::get().map_err(|e| io::Error::other(e.clone()))?;
        let program = host.fs.locate(&spec.program)?;
        let switch_to = switch_to(settings.uid)?;
        let scratch_bytes = u64::from(settings.scratch_mb) << 20;
        let limits = cgroup::Limits {
            // The scratch tmpfs is charged to the process writing it.
            memory_bytes: (u64::from(spec.memory_mb) << 20) + scratch_bytes,
            pids: PIDS_MAX,
        };
        let (cgroup, cgroup_procs) = host.layout.create(limits)?;
        let inherit = host
            .seccomp
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

/// The `(uid, gid)` the child switches to before starting the sandbox: the
/// sandbox uid when the worker is root; nothing when the worker already runs
/// as that uid; any other case is a configuration error.
fn switch_to(uid: u32) -> io::Result<Option<(u32, u32)>> {
    match exec::current_uid() {
        _ if uid == 0 => Err(io::Error::other("WORKER_SANDBOX_UID must not be 0")),
        0 => Ok(Some((uid, uid))),
        own if own == uid => Ok(None),
        own => Err(io::Error::other(format!(
            "the worker runs as uid {own} and cannot switch to WORKER_SANDBOX_UID={uid}: \
             run it as root, or set WORKER_SANDBOX_UID={own}"
        ))),
    }
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
    seccomp: Vec<Vec<u8>>,
}

impl Host {
    fn get() -> Result<&'static Host, &'static String> {
        static HOST: OnceLock<Result<Host, String>> = OnceLock::new();
        HOST.get_or_init(Self::examine).as_ref()
    }

    fn examine() -> Result<Self, String> {
        let bwrap = resolve_program("bwrap")
            .map_err(|_| "bubblewrap is not installed (apt-get install bubblewrap)".to_owned())?;
        let fs = bwrap::RuntimeFs::of_host().map_err(|e| format!("runtime directories: {e}"))?;
        let layout = cgroup::Layout::detect()?;
        let seccomp = seccomp::programs().map_err(|e| format!("seccomp filter: {e}"))?;
        tracing::info!(?layout, "runtime sandbox: bubblewrap, seccomp, cgroups");
        Ok(Self {
            bwrap,
            fs,
            layout,
            seccomp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn works_here_and_refuses_root_as_the_sandbox_uid() {
        Sandbox::default().check().await.unwrap();
        Sandbox::disabled().check().await.unwrap();

        let root = Sandbox::new(SandboxSettings {
            uid: 0,
            ..SandboxSettings::default()
        });
        let error = root.check().await.unwrap_err().to_string();
        assert!(
            error.contains("WORKER_SANDBOX_UID must not be 0"),
            "{error}"
        );
        assert!(error.contains("WORKER_SANDBOX=off"), "{error}");
    }
}
