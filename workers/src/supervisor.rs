//! Owns one runtime child process: how it is started (inside the
//! [`Sandbox`] of its spec, or unconfined in its own process group with an
//! empty environment and a private directory; `kill_on_drop` either way), how
//! its stderr is drained (bounded: long lines are cut, only a tail is kept),
//! and how it is stopped.

use crate::sandbox::{kill_process_group, Confinement, Profile, Sandbox};
use std::{
    ffi::OsString,
    io,
    os::unix::{fs::PermissionsExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStderr, ChildStdin, ChildStdout},
    task::JoinHandle,
};

/// Longest stderr line logged; the rest of the line is dropped.
const STDERR_LINE_LIMIT: usize = 4096;
/// How much of the end of stderr is kept for [`Ending::stderr_tail`].
const STDERR_TAIL: usize = 8192;
/// How long stderr may stay open after the child exited.
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct ProcessSpec {
    /// Absolute path of the program (see [`resolve_program`]).
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    /// Names the scratch directory and the log lines, e.g. `nodejs`.
    pub(crate) label: &'static str,
    /// Memory limit of the whole process (heap, buffers, code, stacks), in
    /// MiB; the sandbox adds its scratch size, which is charged to it too.
    pub(crate) memory_mb: u32,
    pub(crate) sandbox: Sandbox,
    /// What the sandbox allows the process.
    pub(crate) profile: Profile,
}

/// A running child with its pipes taken out: the caller speaks to it through
/// `stdin`/`stdout`, the supervisor keeps the process and its confinement.
pub(crate) struct Supervised {
    child: Child,
    pid: u32,
    stderr: Option<JoinHandle<String>>,
    confinement: Confinement,
}

/// The pipes of a freshly started child.
pub(crate) struct Pipes {
    pub(crate) stdin: ChildStdin,
    pub(crate) stdout: ChildStdout,
}

/// How a child ended.
#[derive(Debug)]
pub(crate) struct Ending {
    /// `None` when the status could not be collected.
    pub(crate) status: Option<ExitStatus>,
    /// The kernel killed it for exceeding its memory limit (sandbox only).
    pub(crate) oom_killed: bool,
    /// The last lines it wrote to stderr.
    pub(crate) stderr_tail: String,
}

impl Supervised {
    /// Starts `spec` as its sandbox says, with nothing in its environment.
    pub(crate) fn spawn(spec: &ProcessSpec) -> io::Result<(Self, Pipes)> {
        let (mut command, confinement) = spec.sandbox.prepare(spec)?;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().unwrap_or_default();
        let pipes = Pipes {
            stdin: child.stdin.take().expect("stdin is piped"),
            stdout: child.stdout.take().expect("stdout is piped"),
        };
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr = tokio::spawn(drain_stderr(stderr, spec.label, pid));
        Ok((
            Self {
                child,
                pid,
                stderr: Some(stderr),
                confinement,
            },
            pipes,
        ))
    }

    /// The pid of the process started (the sandbox launcher when sandboxed):
    /// killing it ends everything the runtime runs.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends SIGKILL to the process group. A sandboxed runtime dies with its
    /// launcher (its pid namespace goes), an unconfined one with its group.
    pub(crate) fn kill(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return; // Reaped already: the pid may belong to someone else now.
        }
        if let Err(e) = kill_process_group(self.pid) {
            tracing::debug!(pid = self.pid, error = %e, "killing the process group");
            let _ = self.child.start_kill();
        }
        // A frozen process dies only once thawed.
        let _ = self.thaw();
    }

    /// Stops every task of a sandboxed process where it is, until [`thaw`];
    /// nothing for an unconfined one.
    ///
    /// [`thaw`]: Supervised::thaw
    pub(crate) fn freeze(&self) -> io::Result<()> {
        self.confinement.cgroup().map_or(Ok(()), |c| c.freeze())
    }

    pub(crate) fn thaw(&self) -> io::Result<()> {
        self.confinement.cgroup().map_or(Ok(()), |c| c.thaw())
    }

    /// Tasks (processes and threads) of a sandboxed process now.
    pub(crate) fn tasks(&self) -> Option<u64> {
        self.confinement.cgroup().map(|c| c.tasks())
    }

    /// Whether the process ever ran into a limit of its sandbox (memory,
    /// tasks): it should be replaced rather than run another job.
    pub(crate) fn limits_reached(&self) -> bool {
        self.confinement.limits_reached()
    }

    /// Waits up to `within` for the child to exit, then kills it; returns
    /// how it ended.
    pub(crate) async fn wait_or_kill(&mut self, within: Duration) -> Ending {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                self.kill();
                self.child.wait().await.ok()
            }
        };
        let stderr_tail = match self.stderr.take() {
            Some(mut task) => match tokio::time::timeout(STDERR_GRACE, &mut task).await {
                Ok(tail) => tail.unwrap_or_default(),
                Err(_) => {
                    task.abort();
                    String::new()
                }
            },
            None => String::new(),
        };
        Ending {
            status,
            oom_killed: self.confinement.oom_killed(),
            stderr_tail,
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // `kill_on_drop` ends the direct child; this ends its group too.
        self.kill();
    }
}

impl Ending {
    /// How the child ended, for error messages: `signal 9` or `exit code 3`.
    /// The sandbox launcher reports a runtime killed by signal N as exit
    /// code 128 + N.
    pub(crate) fn describe(&self) -> String {
        match self.status {
            Some(s) => match (s.signal(), s.code()) {
                (Some(signal), _) => format!("signal {signal}"),
                (None, Some(code)) => format!("exit code {code}"),
                (None, None) => "unknown status".to_owned(),
            },
            None => "status unknown".to_owned(),
        }
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

/// Logs stderr line by line (each cut at [`STDERR_LINE_LIMIT`]) without ever
/// holding more than a buffer and the tail; returns the tail at end of file.
async fn drain_stderr(stderr: ChildStderr, label: &'static str, pid: u32) -> String {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut tail = Vec::new();
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let (piece, complete) = match chunk.iter().position(|&b| b == b'\n') {
            Some(end) => (&chunk[..=end], true),
            None => (chunk, false),
        };
        let used = piece.len();
        let room = STDERR_LINE_LIMIT.saturating_sub(line.len());
        line.extend_from_slice(&piece[..used.min(room)]);
        reader.consume(used);
        if complete {
            let text = String::from_utf8_lossy(&line);
            tracing::debug!(runtime = label, pid, "stderr: {}", text.trim_end());
            tail.extend_from_slice(&line);
            if tail.len() > STDERR_TAIL {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
            line.clear();
        }
    }
    tail.extend_from_slice(&line);
    String::from_utf8_lossy(&tail).into_owned()
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

    fn shell(script: &str, sandbox: Sandbox) -> ProcessSpec {
        ProcessSpec {
            program: resolve_program("sh").unwrap(),
            args: vec!["-c".into(), script.into()],
            label: "test",
            memory_mb: 32,
            sandbox,
            profile: Profile::Runtime,
        }
    }

    #[tokio::test]
    async fn describes_how_a_child_ended() {
        for sandbox in [Sandbox::default(), Sandbox::disabled()] {
            let spec = shell("echo bye >&2; exit 3", sandbox.clone());
            let (mut child, _pipes) = Supervised::spawn(&spec).unwrap();
            let ending = child.wait_or_kill(Duration::from_secs(10)).await;
            assert_eq!(ending.describe(), "exit code 3");
            assert_eq!(ending.stderr_tail, "bye\n");
            assert!(!ending.oom_killed);

            let (mut child, _pipes) = Supervised::spawn(&shell("sleep 30", sandbox)).unwrap();
            let ending = child.wait_or_kill(Duration::ZERO).await;
            assert_eq!(ending.describe(), "signal 9");
        }
    }

    #[tokio::test]
    async fn stderr_is_bounded() {
        // 1 MiB without a line break, then more lines than the tail keeps.
        let script = "process.stderr.write('x'.repeat(1 << 20) + '\\n');\
                      for (let i = 0; i < 2000; i++) process.stderr.write(`line ${i}\\n`);";
        let spec = ProcessSpec {
            program: resolve_program("node").unwrap(),
            args: vec!["-e".into(), script.into()],
            label: "test",
            memory_mb: 256,
            sandbox: Sandbox::default(),
            profile: Profile::Runtime,
        };
        let (mut child, _pipes) = Supervised::spawn(&spec).unwrap();
        let ending = child.wait_or_kill(Duration::from_secs(20)).await;
        assert!(ending.status.unwrap().success(), "{}", ending.stderr_tail);
        assert!(ending.stderr_tail.len() <= STDERR_TAIL + STDERR_LINE_LIMIT);
        assert!(ending.stderr_tail.ends_with("line 1999\n"));
        assert!(!ending.stderr_tail.contains('x'));
    }
}
