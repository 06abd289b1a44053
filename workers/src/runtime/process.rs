//! One warm runtime process running an embedded runner script (`runner.js`,
//! `runner.py`), driven one job at a time over the line protocol of
//! [`super::protocol`]. Shared by every process-based runtime.
//!
//! A sandboxed process is frozen (its cgroup's freezer) from the moment it
//! is ready until a job is written to it, and again as soon as it has
//! answered: nothing a script leaves behind (a timer, a thread, an itimer)
//! runs between jobs. A job that leaves more tasks (threads) in the process
//! than it had when it became ready makes the process unfit for another job.

use super::{
    protocol::{self, Hello, Response},
    Instance, Invocation, LaunchError, Report, RuntimeError,
};
use crate::supervisor::{Ending, ProcessSpec, Supervised};
use futures::{future::BoxFuture, StreamExt};
use schemas::{ErrorCode, JobError, Language};
use std::time::Duration;
use tokio::{
    io::AsyncWriteExt,
    process::{ChildStdin, ChildStdout},
    time::{timeout, timeout_at, Instant},
};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

/// How long a fresh process may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process whose stdout closed may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// What V8 prints on stderr before it aborts at its heap limit.
const HEAP_EXHAUSTED: [&str; 2] = ["JavaScript heap out of memory", "Reached heap limit"];

/// Room for the logs, the error stack and the framing of a response.
const RESPONSE_HEADROOM: usize = 64 * 1024;

/// How to start the processes of one runtime; what a launcher holds.
#[derive(Debug, Clone)]
pub(crate) struct RunnerSpec {
    language: Language,
    /// The script's memory limit, as told in errors.
    memory_mb: u32,
    process: ProcessSpec,
    /// Longest response line accepted; a longer one fails the job.
    max_line_bytes: usize,
}

impl RunnerSpec {
    /// `max_output_bytes` bounds a result, and separately the logs of a job,
    /// as the runner enforces them.
    pub(crate) fn new(
        process: ProcessSpec,
        language: Language,
        max_output_bytes: usize,
        memory_mb: u32,
    ) -> Self {
        Self {
            language,
            memory_mb,
            process,
            // A response carries the result and the logs, each within the limit.
            max_line_bytes: 2 * max_output_bytes + RESPONSE_HEADROOM,
        }
    }

    /// Starts one process and waits until its runner is ready.
    pub(crate) fn launch(&self) -> BoxFuture<'_, Result<Box<dyn Instance>, LaunchError>> {
        Box::pin(async {
            match RunnerProcess::start(&self.process, self.max_line_bytes, self.memory_mb).await {
                Ok(process) => Ok(Box::new(process) as Box<dyn Instance>),
                Err(message) => Err(LaunchError {
                    language: self.language,
                    message,
                }),
            }
        })
    }
}

/// A live runner process.
struct RunnerProcess {
    label: &'static str,
    process: Supervised,
    stdin: ChildStdin,
    stdout: FramedRead<ChildStdout, LinesCodec>,
    last_id: u64,
    /// The script's memory limit, for error messages.
    memory_mb: u32,
    /// Tasks (threads) of the process when it became ready; `None` when
    /// unconfined.
    ready_tasks: Option<u64>,
}

/// Why a job ended without a response, which makes the process unusable.
enum Failure {
    Timeout(Duration),
    Exited,
    TooLarge,
    Protocol(String),
}

impl RunnerProcess {
    /// Starts a process and waits for its `{"ready":true}`.
    async fn start(
        spec: &ProcessSpec,
        max_line_bytes: usize,
        memory_mb: u32,
    ) -> Result<Self, String> {
        let (process, pipes) =
            Supervised::spawn(spec).map_err(|e| format!("{}: {e}", spec.program.display()))?;
        let mut runner = Self {
            label: spec.label,
            process,
            stdin: pipes.stdin,
            stdout: FramedRead::new(
                pipes.stdout,
                LinesCodec::new_with_max_length(max_line_bytes),
            ),
            last_id: 0,
            memory_mb,
            ready_tasks: None,
        };
        match timeout(READY_TIMEOUT, runner.stdout.next()).await {
            Ok(Some(Ok(line))) if serde_json::from_str::<Hello>(&line).is_ok_and(|h| h.ready) => {
                runner.ready_tasks = runner.process.tasks();
                runner
                    .process
                    .freeze()
                    .map_err(|e| format!("cannot freeze the runtime: {e}"))?;
                Ok(runner)
            }
            Ok(Some(Ok(_) | Err(_))) => Err("runner sent no ready line".to_owned()),
            Ok(None) => {
                let ending = runner.process.wait_or_kill(EXIT_GRACE).await;
                Err(format!(
                    "runner exited at start ({}): {}",
                    ending.describe(),
                    ending.stderr_tail.trim()
                ))
            }
            Err(_) => Err(format!("runner not ready within {READY_TIMEOUT:?}")),
        }
    }

    async fn run_job(&mut self, invocation: &Invocation) -> Result<Report, RuntimeError> {
        self.last_id += 1;
        let id = self.last_id;
        let mut request = protocol::request_line(id, invocation);
        request.push('\n');
        let deadline = Instant::now() + invocation.timeout;
        self.process.thaw().map_err(RuntimeError::NotStarted)?;

        let failure = match timeout_at(deadline, self.stdin.write_all(request.as_bytes())).await {
            Ok(Err(e)) => return Err(RuntimeError::NotStarted(e)),
            Err(_) => Failure::Timeout(invocation.timeout),
            Ok(Ok(())) => match timeout_at(deadline, self.stdout.next()).await {
                Err(_) => Failure::Timeout(invocation.timeout),
                Ok(None) => Failure::Exited,
                Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => Failure::TooLarge,
                Ok(Some(Err(LinesCodecError::Io(e)))) => Failure::Protocol(e.to_string()),
                Ok(Some(Ok(line))) => match serde_json::from_str::<Response>(&line) {
                    Ok(response) if response.id == id => {
                        // A script that ran into the sandbox's limits, or
                        // left threads, may run on into the next job.
                        let reusable = !response.recycle
                            && !self.process.limits_reached()
                            && self.process.tasks() <= self.ready_tasks
                            && self.process.freeze().is_ok();
                        return Ok(Report {
                            outcome: response.outcome(),
                            logs: response.logs,
                            reusable,
                        });
                    }
                    Ok(response) => {
                        Failure::Protocol(format!("answer to {} instead of {id}", response.id))
                    }
                    Err(e) => Failure::Protocol(e.to_string()),
                },
            },
        };
        Ok(Report {
            outcome: Err(self.end(failure).await),
            logs: Vec::new(),
            reusable: false,
        })
    }

    /// Kills the process after a failed job and says what went wrong.
    async fn end(&mut self, failure: Failure) -> JobError {
        let (pid, runtime) = (self.process.pid(), self.label);
        let grace = match failure {
            Failure::Exited => EXIT_GRACE,
            _ => Duration::ZERO,
        };
        let ending = self.process.wait_or_kill(grace).await;
        match failure {
            Failure::Timeout(limit) => JobError::new(
                ErrorCode::Timeout,
                format!("script exceeded its timeout of {} ms", limit.as_millis()),
            ),
            Failure::Exited if out_of_memory(&ending) => {
                tracing::info!(pid, runtime, how = %ending.describe(), "runtime ran out of memory");
                JobError::new(
                    ErrorCode::MemoryLimit,
                    format!("script exceeded its memory limit of {} MB", self.memory_mb),
                )
            }
            Failure::Exited => {
                let how = ending.describe();
                tracing::warn!(pid, runtime, %how, "runtime exited during a job");
                JobError::new(
                    ErrorCode::RuntimeError,
                    format!("runtime process exited unexpectedly ({how})"),
                )
            }
            Failure::TooLarge => JobError::new(
                ErrorCode::RuntimeError,
                "result too large: the runtime's answer exceeded the output limit",
            ),
            Failure::Protocol(detail) => {
                tracing::warn!(pid, runtime, %detail, "runtime broke the protocol (wrote to fd 1?)");
                JobError::new(ErrorCode::RuntimeError, "runtime protocol error")
            }
        }
    }
}

/// Whether V8 hit its heap limit or the kernel killed the process at its
/// memory limit (memory outside the heap: buffers, many threads).
fn out_of_memory(ending: &Ending) -> bool {
    ending.oom_killed
        || HEAP_EXHAUSTED
            .iter()
            .any(|marker| ending.stderr_tail.contains(marker))
}

impl Instance for RunnerProcess {
    fn pid(&self) -> Option<u32> {
        Some(self.process.pid())
    }

    fn run<'a>(
        &'a mut self,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<Report, RuntimeError>> {
        Box::pin(self.run_job(invocation))
    }

    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        let Self {
            mut process, stdin, ..
        } = *self;
        // End of input is the runner's signal to exit, which it sees once thawed.
        drop(stdin);
        let _ = process.thaw();
        Box::pin(async move {
            process.wait_or_kill(grace).await;
        })
    }
}
