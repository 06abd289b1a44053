//! The `rust` language (SPEC §4): a source defining
//! `fn handler(params: Value, context: Value) -> Result<Value, String>` is
//! wrapped in a `main` that reads the event on stdin and prints the result,
//! compiled to a WASI module once per distinct source and compiler, and run
//! in the wasm engine.
//!
//! Artifacts are cached on disk (`<cache>/rust/<compiler identity>/`), so
//! the cache survives restarts. Compiling untrusted source is itself a risk
//! (`include_str!("/etc/passwd")`, reads through `/proc`, const-evaluation
//! bombs): `rustc` runs in the workers' OS sandbox with the compiler profile
//! (its own uid, no network, a new `/proc`, only the toolchain, the built
//! crates read-only and its private build directory writable; memory, CPU
//! and task limits of its own cgroup), with a timeout, bounded output and
//! `prlimit` (address space, CPU time, file size). The worker runs at most
//! one compilation per owner at a time, so one tenant's slow sources do not
//! hold back another's.
//!
//! - `deps`: building `serde_json` for the target.
//! - `rustc`: one confined compiler run.

mod deps;
mod rustc;

use crate::{runtime::wasm::CompileError, sandbox::Sandbox, supervisor::resolve_program};
use anyhow::Context as _;
use sha2::{Digest, Sha256};
use std::{
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};
use tokio::sync::OnceCell;

/// Optimisation levels a session may choose with `compile_options.opt_level`.
const OPT_LEVELS: &[&str] = &["0", "1", "2", "3", "s", "z"];
/// The optimisation level when none is chosen.
const DEFAULT_OPT_LEVEL: &str = "s";

/// How to compile Rust sources.
#[derive(Debug, Clone)]
pub struct RustOptions {
    /// The compiler, a path or a name on `PATH`.
    pub rustc: String,
    /// A WASI preview 1 target the compiler has the standard library for:
    /// `wasm32-wasi` (Debian's rustc) or `wasm32-wasip1` (newer toolchains).
    pub target: String,
    /// Where compiled artifacts and the built crates are kept.
    pub cache_dir: PathBuf,
    /// Where the crate sources (`serde_json-1.x` …) are.
    pub crates_dir: PathBuf,
    /// Longest a compilation may take.
    pub timeout: Duration,
    /// Bound on the diagnostics kept from one compilation.
    pub max_output_bytes: usize,
    /// The sandbox the compiler runs in (the runtimes' one, with the
    /// compiler profile).
    pub sandbox: Sandbox,
}

impl Default for RustOptions {
    fn default() -> Self {
        Self {
            rustc: "/usr/bin/rustc".to_owned(),
            target: "wasm32-wasi".to_owned(),
            cache_dir: PathBuf::from("/var/tmp/lambda-worker-cache"),
            crates_dir: PathBuf::from("/usr/share/cargo/registry"),
            timeout: Duration::from_secs(60),
            max_output_bytes: 64 * 1024,
            sandbox: Sandbox::default(),
        }
    }
}

/// Compiles Rust handlers to WASI modules, with an on-disk cache.
pub struct RustCompiler {
    rustc: PathBuf,
    options: RustOptions,
    /// `<cache>/rust/<identity>`: what depends on the compiler lives here.
    dir: PathBuf,
    deps: OnceCell<PathBuf>,
    confinement: rustc::Confinement,
    compilations: AtomicU64,
}

impl RustCompiler {
    /// Asks the compiler who it is (`rustc -vV` and the target make the
    /// cache key) and prepares the cache directory.
    pub async fn new(options: RustOptions) -> anyhow::Result<Self> {
        let rustc = resolve_program(&options.rustc)
            .with_context(|| format!("WORKER_RUSTC={}", options.rustc))?;
        let version = tokio::process::Command::new(&rustc)
            .arg("-vV")
            .output()
            .await
            .with_context(|| format!("running {} -vV", rustc.display()))?;
        anyhow::ensure!(version.status.success(), "{} -vV failed", rustc.display());
        let mut hasher = Sha256::new();
        hasher.update(&version.stdout);
        hasher.update([0]);
        hasher.update(options.target.as_bytes());
        let identity = hex::encode(&hasher.finalize()[..8]);
        let dir = options.cache_dir.join("rust").join(identity);
        std::fs::create_dir_all(dir.join("artifacts"))
            .with_context(|| format!("creating {}", dir.display()))?;
        // Artifacts hold other owners' code: readable by the worker only.
        std::fs::set_permissions(
            dir.join("artifacts"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        // A toolchain outside `/usr` is shown to the sandboxed compiler too.
        let sysroot = tokio::process::Command::new(&rustc)
            .args(["--print", "sysroot"])
            .output()
            .await
            .with_context(|| format!("running {} --print sysroot", rustc.display()))?;
        let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
        let read_only = (!sysroot.starts_with("/usr") && sysroot.is_dir())
            .then_some(sysroot)
            .into_iter()
            .collect();
        let confinement = rustc::Confinement::new(options.sandbox.clone(), read_only);
        Ok(Self {
            rustc,
            options,
            dir,
            deps: OnceCell::new(),
            confinement,
            compilations: AtomicU64::new(0),
        })
    }

    /// Builds the crates handlers may use, unless already built; compiling
    /// waits for this, so a worker calls it at start to be ready sooner.
    pub async fn prepare(&self) -> Result<&Path, String> {
        self.deps
            .get_or_try_init(|| async {
                let deps = self.dir.join("deps");
                if deps.join("libserde_json.rlib").is_file() {
                    return Ok(deps);
                }
                tracing::info!(dir = %deps.display(), "building serde_json for {}", self.options.target);
                let building = self
                    .dir
                    .join(format!("deps.tmp-{}", uuid::Uuid::new_v4().simple()));
                let _ = std::fs::remove_dir_all(&building);
                std::fs::create_dir_all(&building).map_err(|e| e.to_string())?;
                let build = deps::DepsBuild {
                    rustc: &self.rustc,
                    target: &self.options.target,
                    crates_dir: &self.options.crates_dir,
                };
                if let Err(e) = build.build(&building).await {
                    let _ = std::fs::remove_dir_all(&building);
                    return Err(e);
                }
                // Another worker may have finished first; either copy is good.
                if std::fs::rename(&building, &deps).is_err() {
                    let _ = std::fs::remove_dir_all(&building);
                }
                Ok(deps)
            })
            .await
            .map(PathBuf::as_path)
    }

    /// The WASI module of `source`, compiled now unless cached on disk.
    /// `context_json` may choose an allowed `compile_options.opt_level`.
    pub async fn compile(
        &self,
        script_hash: &str,
        source: &str,
        context_json: &str,
    ) -> Result<Vec<u8>, CompileError> {
        let opt_level = opt_level(context_json)?;
        let artifact = self
            .dir
            .join("artifacts")
            .join(format!("{script_hash}-O{opt_level}.wasm"));
        if let Ok(binary) = tokio::fs::read(&artifact).await {
            return Ok(binary);
        }
        let deps = self
            .prepare()
            .await
            .map_err(|e| CompileError::new("the Rust toolchain is not ready", e))?;
        let build_dir = self
            .dir
            .join(format!("build-{}", uuid::Uuid::new_v4().simple()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&build_dir)
            .map_err(|e| CompileError::new("cannot create a build directory", e.to_string()))?;
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let run = rustc::Run {
            rustc: &self.rustc,
            target: &self.options.target,
            opt_level,
            deps,
            build_dir: &build_dir,
            confinement: &self.confinement,
            timeout: self.options.timeout,
            max_output_bytes: self.options.max_output_bytes,
        };
        let built = run.compile(source).await;
        let stored = built.and_then(|wasm| {
            std::fs::rename(&wasm, &artifact)
                .map_err(|e| CompileError::new("cannot store the compiled module", e.to_string()))
        });
        let _ = std::fs::remove_dir_all(&build_dir);
        stored?;
        tokio::fs::read(&artifact)
            .await
            .map_err(|e| CompileError::new("cannot read the compiled module", e.to_string()))
    }

    /// How many times this compiler has run `rustc` on a handler (cache misses).
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// Where compiled modules are kept.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.dir.join("artifacts")
    }
}

/// The allowed `compile_options.opt_level` of the context, or the default.
/// Nothing else of `compile_options` reaches the compiler.
fn opt_level(context_json: &str) -> Result<&'static str, CompileError> {
    let context: serde_json::Value = serde_json::from_str(context_json).unwrap_or_default();
    let Some(chosen) = context.pointer("/compile_options/opt_level") else {
        return Ok(DEFAULT_OPT_LEVEL);
    };
    let chosen = match chosen {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    OPT_LEVELS
        .iter()
        .find(|level| **level == chosen)
        .copied()
        .ok_or_else(|| {
            CompileError::new(
                "compile_options.opt_level is not allowed",
                format!("opt_level must be one of {OPT_LEVELS:?}, not {chosen:?}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_opt_levels_pass() {
        assert_eq!(opt_level("{}").unwrap(), DEFAULT_OPT_LEVEL);
        assert_eq!(
            opt_level(r#"{"compile_options":{"opt_level":3}}"#).unwrap(),
            "3"
        );
        assert_eq!(
            opt_level(r#"{"compile_options":{"opt_level":"z","linker":"x"}}"#).unwrap(),
            "z"
        );
        let refused = opt_level(r#"{"compile_options":{"opt_level":"3 -C linker=sh"}}"#);
        assert!(refused.unwrap_err().diagnostics.contains("must be one of"));
    }
}
