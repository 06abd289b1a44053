//! One compiler run on untrusted source: the handler wrapped in a `main`,
//! fed to `rustc` on stdin, in the sandbox's compiler profile, through the
//! supervisor, bounded in time, memory and output.

use super::deps::dependency_path;
use crate::{
    runtime::wasm::CompileError,
    sandbox::{Profile, Sandbox},
    supervisor::{resolve_program, ProcessSpec, Supervised},
};
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Address space the compiler may map (it needs ~200 MiB for a handler).
const RUSTC_ADDRESS_SPACE: u64 = 2 << 30;
/// Largest file the compiler may write.
const RUSTC_FILE_SIZE: u64 = 256 << 20;
/// The output module's name inside the build directory.
const OUTPUT: &str = "handler.wasm";
/// Runs the compiler with a plain `PATH` (it finds its linker there) and its
/// diagnostics on stdout, where the supervisor lets us read them.
const SHELL: &str = r#"PATH=/usr/local/bin:/usr/bin:/bin; export PATH; exec "$@" 2>&1"#;

/// Appended to the user's source (so its line numbers stay as written): the
/// names the contract puts in scope, and the `main` of the WASI command.
const WRAPPER: &str = r#"
mod __lambda_prelude {
    pub use serde_json::{json, Value};
}
#[allow(unused_imports)]
use __lambda_prelude::*;

fn main() {
    let mut input = ::std::string::String::new();
    if let ::std::result::Result::Err(e) =
        ::std::io::Read::read_to_string(&mut ::std::io::stdin(), &mut input)
    {
        ::std::eprintln!("cannot read the event: {}", e);
        ::std::process::exit(2);
    }
    let mut event: ::serde_json::Value = match ::serde_json::from_str(&input) {
        ::std::result::Result::Ok(event) => event,
        ::std::result::Result::Err(e) => {
            ::std::eprintln!("the event is not JSON: {}", e);
            ::std::process::exit(2);
        }
    };
    let mut take = |key: &str| {
        event
            .get_mut(key)
            .map(::serde_json::Value::take)
            .unwrap_or(::serde_json::Value::Null)
    };
    let (params, context) = (take("params"), take("context"));
    match handler(params, context) {
        ::std::result::Result::Ok(value) => ::std::println!("{}", value),
        ::std::result::Result::Err(message) => {
            ::std::eprintln!("{}", message);
            ::std::process::exit(1);
        }
    }
}
"#;

/// Where the compiler runs: in the workers' OS sandbox (bubblewrap, its own
/// uid, no network, a new `/proc`, a cgroup with memory, CPU and task
/// limits) with the compiler profile, which lets it start its linker and
/// shows it only the toolchain (`/usr`, and `read_only`: the built crates,
/// a sysroot outside `/usr`) and its own build directory. Inside, `prlimit`
/// (util-linux) bounds its CPU time, address space and file sizes.
#[derive(Debug)]
pub(super) struct Confinement {
    pub(super) sandbox: Sandbox,
    pub(super) read_only: Vec<PathBuf>,
    prlimit: Option<PathBuf>,
}

impl Confinement {
    pub(super) fn new(sandbox: Sandbox, read_only: Vec<PathBuf>) -> Self {
        let prlimit = resolve_program("prlimit").ok();
        if prlimit.is_none() {
            tracing::warn!("prlimit not found: rustc runs without CPU-time and file-size limits");
        }
        if !sandbox.is_enabled() {
            tracing::warn!("WORKER_SANDBOX=off: rustc runs UNCONFINED on untrusted sources");
        }
        Self {
            sandbox,
            read_only,
            prlimit,
        }
    }

    /// The command prefix that applies the limits.
    fn prefix(&self, timeout: Duration) -> Vec<OsString> {
        let mut prefix = Vec::new();
        if let Some(prlimit) = &self.prlimit {
            prefix.extend([
                prlimit.clone().into(),
                format!("--as={RUSTC_ADDRESS_SPACE}").into(),
                format!("--fsize={RUSTC_FILE_SIZE}").into(),
                format!("--cpu={}", timeout.as_secs().max(1)).into(),
                "--".into(),
            ]);
        }
        prefix
    }
}

/// One compilation.
pub(super) struct Run<'a> {
    pub(super) rustc: &'a Path,
    pub(super) target: &'a str,
    pub(super) opt_level: &'a str,
    /// The built crates (`libserde_json.rlib` …).
    pub(super) deps: &'a Path,
    /// An empty directory only this run uses.
    pub(super) build_dir: &'a Path,
    pub(super) confinement: &'a Confinement,
    pub(super) timeout: Duration,
    pub(super) max_output_bytes: usize,
}

impl Run<'_> {
    /// Compiles `source`; the module's path in the build directory, or the
    /// compiler's diagnostics.
    pub(super) async fn compile(&self, source: &str) -> Result<PathBuf, CompileError> {
        let failed = |message: &str, e: std::io::Error| CompileError::new(message, e.to_string());
        let output = self.build_dir.join(OUTPUT);
        let mut command = self.confinement.prefix(self.timeout);
        command.push(self.rustc.into());
        command.extend(self.rustc_args(&output));
        let mut args: Vec<OsString> = vec!["-c".into(), SHELL.into(), "rustc".into()];
        args.extend(command);
        let mut read_only = self.confinement.read_only.clone();
        read_only.push(self.deps.to_owned());
        let spec = ProcessSpec {
            program: resolve_program("sh").map_err(|e| failed("no shell to run rustc", e))?,
            args,
            label: "rustc",
            memory_mb: u32::try_from(RUSTC_ADDRESS_SPACE >> 20).unwrap_or(u32::MAX),
            sandbox: self.confinement.sandbox.clone(),
            profile: Profile::Compiler {
                read_only,
                writable: self.build_dir.to_owned(),
            },
        };
        let (mut child, pipes) =
            Supervised::spawn(&spec).map_err(|e| failed("cannot start rustc", e))?;
        let mut program = format!("{source}\n{WRAPPER}").into_bytes();
        let mut stdin = pipes.stdin;
        let mut stdout = pipes.stdout;
        let limit = self.max_output_bytes;
        let talk = async {
            let write = async {
                // A compiler that stops reading has failed; its output says why.
                let _ = stdin.write_all(&program).await;
                drop(stdin);
            };
            let (_, diagnostics) = tokio::join!(write, read_bounded(&mut stdout, limit));
            diagnostics
        };
        let Ok(diagnostics) = tokio::time::timeout(self.timeout, talk).await else {
            child.wait_or_kill(Duration::ZERO).await;
            return Err(CompileError::new(
                "the Rust source does not compile",
                format!("compilation exceeded {} s", self.timeout.as_secs()),
            ));
        };
        program.clear();
        let ending = child.wait_or_kill(Duration::from_secs(5)).await;
        if ending.status.is_some_and(|s| s.success()) && output.is_file() {
            return Ok(output);
        }
        let diagnostics = if diagnostics.trim().is_empty() {
            format!("rustc failed: {}", ending.describe())
        } else {
            diagnostics
        };
        Err(CompileError::new(
            "the Rust source does not compile",
            diagnostics,
        ))
    }

    fn rustc_args(&self, output: &Path) -> Vec<OsString> {
        let mut extern_arg = OsString::from("serde_json=");
        extern_arg.push(self.deps.join("libserde_json.rlib"));
        vec![
            "-".into(),
            "--crate-name".into(),
            "handler".into(),
            "--crate-type".into(),
            "bin".into(),
            "--edition".into(),
            "2021".into(),
            "--target".into(),
            self.target.into(),
            "-C".into(),
            format!("opt-level={}", self.opt_level).into(),
            "-C".into(),
            "debuginfo=0".into(),
            "-C".into(),
            "strip=symbols".into(),
            "-A".into(),
            "warnings".into(),
            "--color".into(),
            "never".into(),
            "--extern".into(),
            extern_arg,
            "-L".into(),
            dependency_path(self.deps),
            "-o".into(),
            output.into(),
        ]
    }
}

/// Reads to the end, keeping at most `limit` bytes.
async fn read_bounded(reader: &mut (impl AsyncReadExt + Unpin), limit: usize) -> String {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(n @ 1..) = reader.read(&mut chunk).await {
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if kept.len() >= limit {
        text.push_str("\n… (diagnostics truncated)");
    }
    text
}
