//! The bubblewrap command line of a sandboxed runtime.
//!
//! bubblewrap (`bwrap`) runs unprivileged (it is not installed setuid here:
//! it relies on user namespaces) and builds the sandbox: new user, pid,
//! network, IPC, UTS and cgroup namespaces; a root file system holding only
//! the read-only runtime of the host (`/usr` and the `/bin`, `/lib*` links or binds), a
//! new `/proc` of its own pid namespace, a minimal `/dev` and a size-limited
//! tmpfs at `/tmp` as the working directory; an empty environment; no
//! capabilities; a new session; death with its parent; no further user
//! namespaces; and the seccomp filters, loaded right before the runtime runs.

use std::{
    ffi::OsString,
    io,
    os::fd::RawFd,
    path::{Path, PathBuf},
};

/// Top-level directories that may hold (or link to) the runtime's files.
const SYSTEM_DIRS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// How the host's runtime directories appear in the sandbox.
#[derive(Debug, Clone)]
pub(super) struct RuntimeFs {
    /// `--ro-bind` and `--symlink` arguments.
    arguments: Vec<OsString>,
    /// Host directories visible (read-only) in the sandbox.
    visible: Vec<PathBuf>,
    /// `env`, which starts the runtime with an empty environment.
    env: PathBuf,
}

impl RuntimeFs {
    /// `/usr` read-only, and each of `/bin`, `/sbin`, `/lib*` as the same
    /// symbolic link it is on the host (merged /usr) or as a read-only bind.
    pub(super) fn of_host() -> io::Result<Self> {
        let mut fs = Self {
            arguments: Vec::new(),
            visible: Vec::new(),
            env: PathBuf::new(),
        };
        fs.bind(Path::new("/usr"))?;
        for dir in SYSTEM_DIRS.iter().map(Path::new) {
            match dir.symlink_metadata() {
                Ok(meta) if meta.is_symlink() => {
                    let target = std::fs::read_link(dir)?;
                    fs.arguments
                        .extend(["--symlink".into(), target.into(), dir.into()]);
                }
                Ok(meta) if meta.is_dir() => fs.bind(dir)?,
                _ => {}
            }
        }
        fs.env = fs.locate(Path::new("/usr/bin/env"))?;
        Ok(fs)
    }

    fn bind(&mut self, dir: &Path) -> io::Result<()> {
        let canonical = dir.canonicalize()?;
        self.arguments
            .extend(["--ro-bind".into(), canonical.clone().into(), dir.into()]);
        self.visible.push(canonical);
        Ok(())
    }

    /// The path of `program` inside the sandbox, which is its canonical host
    /// path when that lies in a visible directory.
    pub(super) fn locate(&self, program: &Path) -> io::Result<PathBuf> {
        let canonical = program.canonicalize()?;
        if self.visible.iter().any(|dir| canonical.starts_with(dir)) {
            return Ok(canonical);
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} is outside the sandbox's read-only runtime ({}); install it under /usr",
                canonical.display(),
                self.visible
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// The arguments of `bwrap` that run `program` with `args` in a sandbox;
/// `extra` (more binds) comes after the runtime directories, and `workdir`
/// is the working directory.
pub(super) fn arguments(
    fs: &RuntimeFs,
    scratch_bytes: u64,
    seccomp_fds: &[RawFd],
    extra: &[OsString],
    workdir: &Path,
    program: &Path,
    args: &[OsString],
) -> Vec<OsString> {
    let mut all: Vec<OsString> = [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
        "--hostname",
        "sandbox",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    all.extend(fs.arguments.iter().cloned());
    all.extend(
        [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            &scratch_bytes.to_string(),
            "--tmpfs",
            "/tmp",
        ]
        .map(OsString::from),
    );
    // After `/tmp` (a bind below it stays visible), before `/` is remounted
    // read-only (binds need their mount points made).
    all.extend(extra.iter().cloned());
    all.extend(["--remount-ro", "/", "--remount-ro", "/dev"].map(OsString::from));
    all.extend(["--chdir".into(), workdir.into()]);
    for fd in seccomp_fds {
        all.extend(["--add-seccomp-fd".into(), fd.to_string().into()]);
    }
    all.extend(["--".into(), fs.env.clone().into(), "-i".into()]);
    all.push(program.into());
    all.extend(args.iter().cloned());
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_usr_and_nothing_else_of_the_host() {
        let fs = RuntimeFs::of_host().unwrap();
        let node = fs.locate(Path::new("/bin/sh")).unwrap();
        assert!(node.starts_with("/usr") || node.starts_with("/bin"));
        let err = fs.locate(Path::new("/etc/passwd")).unwrap_err();
        assert!(err.to_string().contains("outside the sandbox"), "{err}");

        let args = arguments(
            &fs,
            1 << 20,
            &[7],
            &[],
            Path::new("/tmp"),
            Path::new("/usr/bin/node"),
            &["-e".into()],
        );
        let text: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        let at = |flag| text.iter().position(|a| *a == flag).unwrap();
        assert_eq!(text[at("--size") + 1], "1048576");
        assert_eq!(text[at("--tmpfs") + 1], "/tmp");
        assert_eq!(text[at("--add-seccomp-fd") + 1], "7");
        assert_eq!(
            text[text.len() - 5..],
            ["--", "/usr/bin/env", "-i", "/usr/bin/node", "-e"]
        );
        // Every host directory bound in is read-only and a runtime directory.
        assert!(!text.contains(&"--bind"));
        for (i, _) in text.iter().enumerate().filter(|(_, a)| **a == "--ro-bind") {
            let source = text[i + 1];
            assert!(
                source == "/usr" || SYSTEM_DIRS.contains(&source),
                "{source}"
            );
        }
        assert_eq!(text[at("--remount-ro") + 1], "/");
        assert_eq!(text[at("--chdir") + 1], "/tmp");
    }
}
