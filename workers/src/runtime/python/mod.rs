//! The Python runtime: warm `python3` processes in isolated mode running the
//! embedded `runner.py`, which implements the python script contract
//! (SPEC §4): top-level code that sets `result`, or a module defining
//! `handle(params)` or `lambda_handler(event, context)`.

use super::{process::RunnerSpec, Instance, LaunchError, Launcher};
use crate::{
    sandbox::{Profile, Sandbox},
    supervisor::{resolve_program, ProcessSpec},
};
use futures::future::BoxFuture;
use schemas::Language;
use std::{
    io,
    path::{Path, PathBuf},
};

const RUNNER_PY: &str = include_str!("runner.py");
/// Where a bare interpreter name is looked for before `PATH`: the system's
/// Python, rather than a version manager's shim that costs a shell per spawn.
const SYSTEM_BIN: &str = "/usr/bin";
/// Memory the interpreter needs besides what a script allocates; with no
/// per-script limit, the whole process gets `UNLIMITED_PROCESS_MB`.
const PROCESS_OVERHEAD_MB: u32 = 64;
const UNLIMITED_PROCESS_MB: u32 = 4096;
/// Oldest Python the runner supports (top-level `await` needs 3.8).
const MIN_VERSION: (u32, u32) = (3, 8);

/// How to start Python processes.
#[derive(Debug, Clone)]
pub struct PythonOptions {
    /// `python3`, looked up in `/usr/bin` and then on `PATH`, or a path.
    pub python_bin: String,
    /// Address space each script may map beyond the runner's own, in MiB;
    /// going over it is a `MEMORY_LIMIT` error for the job.
    pub memory_mb: u32,
    /// Bound on a result, and separately on the logs of one job.
    pub max_output_bytes: usize,
    /// Where the processes run; the sandbox limits the whole process to
    /// `memory_mb` plus what the interpreter needs.
    pub sandbox: Sandbox,
}

impl Default for PythonOptions {
    fn default() -> Self {
        Self {
            python_bin: "python3".to_owned(),
            memory_mb: 128,
            max_output_bytes: 1024 * 1024,
            sandbox: Sandbox::default(),
        }
    }
}

/// Starts warm `python3` processes.
pub struct PythonLauncher {
    runner: RunnerSpec,
}

impl PythonLauncher {
    /// Resolves the interpreter to its real path once, here, and checks that
    /// it is a Python 3 the runner supports.
    pub fn new(options: &PythonOptions) -> io::Result<Self> {
        let program = resolve_interpreter(&options.python_bin)?;
        let args = vec![
            // Isolated (no user site, no PYTHON* variables, no cwd on
            // sys.path), no site-packages, no .pyc writes, unbuffered.
            "-I".into(),
            "-S".into(),
            "-B".into(),
            "-u".into(),
            "-c".into(),
            RUNNER_PY.into(),
            options.max_output_bytes.to_string().into(),
            options.memory_mb.to_string().into(),
        ];
        Ok(Self {
            runner: RunnerSpec::new(
                ProcessSpec {
                    program,
                    args,
                    label: Language::Python.as_str(),
                    memory_mb: match options.memory_mb {
                        0 => UNLIMITED_PROCESS_MB,
                        mb => mb.saturating_add(PROCESS_OVERHEAD_MB),
                    },
                    sandbox: options.sandbox.clone(),
                    profile: Profile::Runtime,
                },
                Language::Python,
                options.max_output_bytes,
                options.memory_mb,
            ),
        })
    }
}

impl Launcher for PythonLauncher {
    fn language(&self) -> Language {
        Language::Python
    }

    fn launch(&self) -> BoxFuture<'_, Result<Box<dyn Instance>, LaunchError>> {
        self.runner.launch()
    }
}

/// Finds the interpreter and asks it where it really lives, so that every
/// spawn runs the binary itself, not a shim or a chain of symlinks.
fn resolve_interpreter(name: &str) -> io::Result<PathBuf> {
    let system = Path::new(SYSTEM_BIN).join(name);
    let found = if name.contains('/') {
        resolve_program(name)?
    } else {
        resolve_program(&system.to_string_lossy()).or_else(|_| resolve_program(name))?
    };
    let probe = "import sys; print(*sys.version_info[:2]); print(sys.executable)";
    let output = std::process::Command::new(&found)
        .args(["-I", "-S", "-c", probe])
        .output()?;
    let invalid = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", found.display()),
        )
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(invalid(format!("not a working Python: {}", stderr.trim())));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines();
    let version: Vec<u32> = lines
        .next()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|n| n.parse().ok())
        .collect();
    let &[major, minor] = version.as_slice() else {
        return Err(invalid(format!("unexpected answer: {stdout}")));
    };
    if major != MIN_VERSION.0 || minor < MIN_VERSION.1 {
        return Err(invalid(format!(
            "Python {major}.{minor}; Python 3.{} or newer is needed",
            MIN_VERSION.1
        )));
    }
    let executable = lines.next().filter(|p| !p.is_empty()).map(Path::new);
    std::fs::canonicalize(executable.unwrap_or(&found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_real_interpreter() {
        let python = resolve_interpreter("python3").unwrap();
        assert!(python.is_absolute());
        assert_eq!(std::fs::canonicalize(&python).unwrap(), python);
        if Path::new(SYSTEM_BIN).join("python3").exists() {
            assert!(python.starts_with(SYSTEM_BIN), "{}", python.display());
        }
        let error = resolve_interpreter("sh").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(resolve_interpreter("no-such-python").is_err());
    }
}
