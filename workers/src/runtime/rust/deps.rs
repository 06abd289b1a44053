//! The crates a Rust handler can use (`serde_json` and what it needs), built
//! once per compiler identity as rlibs for the wasm target, from the crate
//! sources Debian packages ship (`librust-serde-json-dev` and friends under
//! `/usr/share/cargo/registry`). These sources are trusted: they are built
//! directly, their build scripts run to learn the `--cfg`s they set.

use std::{
    ffi::OsString,
    io,
    path::{Path, PathBuf},
    process::Stdio,
};
use tokio::process::Command;

/// Crates in build order: name, features, dependencies.
const CRATES: &[(&str, &[&str], &[&str])] = &[
    ("itoa", &[], &[]),
    ("ryu", &[], &[]),
    ("serde", &["std"], &[]),
    ("serde_json", &["std"], &["itoa", "ryu", "serde"]),
];

/// How to build the crates.
pub(super) struct DepsBuild<'a> {
    pub(super) rustc: &'a Path,
    pub(super) target: &'a str,
    /// Where the crate sources live, one `<name>-<version>` directory each.
    pub(super) crates_dir: &'a Path,
}

impl DepsBuild<'_> {
    /// Builds every crate into `out` (which must exist and be empty).
    pub(super) async fn build(&self, out: &Path) -> Result<(), String> {
        for (name, features, deps) in CRATES {
            let source = newest(self.crates_dir, name).map_err(|e| {
                format!(
                    "crate {name} not found in {}: {e}",
                    self.crates_dir.display()
                )
            })?;
            let edition = edition(&source);
            let mut args: Vec<OsString> = vec![
                "--crate-name".into(),
                (*name).into(),
                "--crate-type".into(),
                "rlib".into(),
                "--edition".into(),
                edition.clone().into(),
                "--target".into(),
                self.target.into(),
                "-C".into(),
                "opt-level=3".into(),
                "--cap-lints".into(),
                "allow".into(),
                "-L".into(),
                dependency_path(out),
                "--out-dir".into(),
                out.into(),
            ];
            for feature in *features {
                args.extend(["--cfg".into(), format!("feature=\"{feature}\"").into()]);
            }
            for dep in *deps {
                let rlib = out.join(format!("lib{dep}.rlib"));
                args.extend([
                    "--extern".into(),
                    format!("{dep}={}", rlib.display()).into(),
                ]);
            }
            for cfg in self
                .build_script_cfgs(&source, &edition, features, out)
                .await?
            {
                args.extend(["--cfg".into(), cfg.into()]);
            }
            args.push(source.join("src/lib.rs").into());
            run(self.rustc, &args, &[]).await?;
        }
        Ok(())
    }

    /// Compiles and runs the crate's `build.rs`, if any, and returns the
    /// `cargo:rustc-cfg=` values it prints.
    async fn build_script_cfgs(
        &self,
        source: &Path,
        edition: &str,
        features: &[&str],
        out: &Path,
    ) -> Result<Vec<String>, String> {
        let script = source.join("build.rs");
        if !script.is_file() {
            return Ok(Vec::new());
        }
        let name = source.file_name().unwrap_or_default().to_string_lossy();
        let exe = out.join(format!("build-script-{name}"));
        let args: Vec<OsString> = vec![
            "--crate-name".into(),
            "build_script_build".into(),
            "--crate-type".into(),
            "bin".into(),
            "--edition".into(),
            edition.into(),
            "--cap-lints".into(),
            "allow".into(),
            script.into(),
            "-o".into(),
            exe.clone().into(),
        ];
        run(self.rustc, &args, &[]).await?;
        let arch = self.target.split('-').next().unwrap_or_default();
        let os = self.target.split('-').nth(1).unwrap_or_default();
        let mut env: Vec<(String, OsString)> = vec![
            ("RUSTC".into(), self.rustc.into()),
            ("TARGET".into(), self.target.into()),
            ("CARGO_CFG_TARGET_ARCH".into(), arch.into()),
            ("CARGO_CFG_TARGET_OS".into(), os.into()),
            ("CARGO_MANIFEST_DIR".into(), source.into()),
            ("OUT_DIR".into(), out.into()),
        ];
        for feature in features {
            env.push((
                format!("CARGO_FEATURE_{}", feature.to_uppercase()),
                "1".into(),
            ));
        }
        let stdout = run(&exe, &[], &env).await?;
        let _ = std::fs::remove_file(&exe);
        Ok(stdout
            .lines()
            .filter_map(|line| line.strip_prefix("cargo:rustc-cfg="))
            .map(str::to_owned)
            .collect())
    }
}

/// `dependency=<dir>`, the `-L` argument for crates found through `--extern`.
pub(super) fn dependency_path(dir: &Path) -> OsString {
    let mut arg = OsString::from("dependency=");
    arg.push(dir);
    arg
}

/// The newest `<name>-<version>` directory in `dir`.
fn newest(dir: &Path, name: &str) -> io::Result<PathBuf> {
    let prefix = format!("{name}-");
    let mut found: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let version = file_name.strip_prefix(&prefix)?;
            let numbers = version
                .split('.')
                .map(|n| n.parse::<u64>().ok())
                .collect::<Option<Vec<_>>>()?;
            Some((numbers, entry.path()))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, path)| path)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such crate"))
}

/// The `edition` in the crate's Cargo.toml (2015 when it names none).
fn edition(source: &Path) -> String {
    let manifest = std::fs::read_to_string(source.join("Cargo.toml")).unwrap_or_default();
    manifest
        .lines()
        .filter_map(|line| line.trim().strip_prefix("edition"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .next()
        .unwrap_or_else(|| "2015".to_owned())
}

/// Runs a trusted build step; its stdout, or its output as the error.
async fn run(
    program: &Path,
    args: &[OsString],
    env: &[(String, OsString)],
) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", program.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} {:?} failed ({}): {}",
            program.display(),
            args,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
