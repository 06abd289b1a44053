//! Owns one runtime child process: how it is started (own process group,
//! empty environment, private scratch directory, `kill_on_drop`), how its
//! stderr is drained, and how it is stopped.

use std::{
    ffi::OsString,
    io,
    os::unix::{fs::PermissionsExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStderr, ChildStdin, ChildStdout, Command},
};

/// Longest stderr line logged; the rest of the line is dropped.
const STDERR_LINE_LIMIT: usize = 4096;

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct ProcessSpec {
    /// Absolute path of the program (see [`resolve_program`]).
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    /// Names the scratch directory and the log lines, e.g. `nodejs`.
    pub(crate) label: &'static str,
}

/// A running child with its pipes taken out: the caller speaks to it through
/// `stdin`/`stdout`, the supervisor keeps the process and its directory.
pub(crate) struct Supervised {
    child: Child,
    pid: u32,
    workdir: PathBuf,
}

/// The pipes of a freshly started child.
pub(crate) struct Pipes {
    pub(crate) stdin: ChildStdin,
    pub(crate) stdout: ChildStdout,
}

impl Supervised {
    /// Starts `spec` in a fresh scratch directory, with nothing in its environment.
    pub(crate) fn spawn(spec: &ProcessSpec) -> io::Result<(Self, Pipes)> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let workdir = std::env::temp_dir().join(format!(
            "lambda-worker-{}-{}-{n}",
            std::process::id(),
            spec.label
        ));
        match std::fs::remove_dir_all(&workdir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&workdir)?;

        let spawned = Command::new(&spec.program)
            .args(&spec.args)
            .env_clear()
            .current_dir(&workdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that a signal meant for the worker
            // (Ctrl-C in a terminal) does not reach the runtimes directly.
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&workdir);
                return Err(e);
            }
        };
        let pid = child.id().unwrap_or_default();
        let pipes = Pipes {
            stdin: child.stdin.take().expect("stdin is piped"),
            stdout: child.stdout.take().expect("stdout is piped"),
        };
        let stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(drain_stderr(stderr, spec.label, pid));
        Ok((
            Self {
                child,
                pid,
                workdir,
            },
            pipes,
        ))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends SIGKILL. The runtimes start no processes of their own yet, so
    /// killing the one process is enough; once scripts may fork, this has to
    /// signal the whole process group.
    pub(crate) fn kill(&mut self) {
        if let Err(e) = self.child.start_kill() {
            tracing::debug!(pid = self.pid, error = %e, "kill failed (already gone?)");
        }
    }

    /// Waits up to `within` for the child to exit, then kills it; returns
    /// how it ended.
    pub(crate) async fn wait_or_kill(&mut self, within: Duration) -> Option<ExitStatus> {
        if let Ok(status) = tokio::time::timeout(within, self.child.wait()).await {
            return status.ok();
        }
        self.kill();
        self.child.wait().await.ok()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // `kill_on_drop` ends the process; the directory is ours to remove.
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

/// How a child ended, for error messages: `signal 9` or `exit code 3`.
pub(crate) fn describe_exit(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => match (s.signal(), s.code()) {
            (Some(signal), _) => format!("signal {signal}"),
            (None, Some(code)) => format!("exit code {code}"),
            (None, None) => "unknown status".to_owned(),
        },
        None => "status unknown".to_owned(),
    }
}

/// Finds `name` like a shell would (a path is taken as is, a bare name is
/// looked up on `PATH`) and returns it as an absolute path.
pub(crate) fn resolve_program(name: &str) -> io::Result<PathBuf> {
    let is_executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if name.contains('/') {
        Some(PathBuf::from(name)).filter(|p| is_executable(p))
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| is_executable(p))
        })
    };
    let found = found.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("executable '{name}' not found"),
        )
    })?;
    std::path::absolute(found)
}

async fn drain_stderr(stderr: ChildStderr, label: &'static str, pid: u32) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let shown = &line[..line.len().min(STDERR_LINE_LIMIT)];
                let text = String::from_utf8_lossy(shown);
                tracing::debug!(runtime = label, pid, "stderr: {}", text.trim_end());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_programs_on_path() {
        let sh = resolve_program("sh").unwrap();
        assert!(sh.is_absolute());
        assert!(resolve_program("no-such-program-here").is_err());
        assert!(resolve_program("/no/such/program").is_err());
    }

    #[tokio::test]
    async fn describes_how_a_child_ended() {
        let spec = ProcessSpec {
            program: resolve_program("sh").unwrap(),
            args: vec!["-c".into(), "exit 3".into()],
            label: "test",
        };
        let (mut child, _pipes) = Supervised::spawn(&spec).unwrap();
        let status = child.wait_or_kill(Duration::from_secs(10)).await;
        assert_eq!(describe_exit(status), "exit code 3");

        let spec = ProcessSpec {
            args: vec!["-c".into(), "sleep 30".into()],
            ..spec
        };
        let (mut child, _pipes) = Supervised::spawn(&spec).unwrap();
        let workdir = child.workdir.clone();
        assert!(workdir.is_dir());
        let status = child.wait_or_kill(Duration::ZERO).await;
        assert_eq!(describe_exit(status), "signal 9");
        drop(child);
        assert!(!workdir.exists());
    }
}
