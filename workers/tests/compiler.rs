//! The Rust compiler on hostile sources: it runs in the OS sandbox, so a
//! source can include nothing of the host at compile time — not its files,
//! not the worker through `/proc`, not another tenant's sandbox through
//! `/proc/<pid>/root`.

use schemas::Language;
use std::time::Duration;
use workers::runtime::{
    node::{NodeLauncher, NodeOptions},
    rust::{RustCompiler, RustOptions},
    Invocation, Pool,
};

async fn compiler() -> RustCompiler {
    let compiler = RustCompiler::new(RustOptions::default())
        .await
        .expect("rustc is installed");
    compiler.prepare().await.expect("serde_json builds");
    compiler
}

/// Compiles a handler returning `include_str!(path)`: the module on success,
/// the diagnostics on failure.
async fn include(compiler: &RustCompiler, path: &str) -> Result<Vec<u8>, String> {
    let source = format!(
        "// {}\nconst S: &str = include_str!({path:?});\n\
         fn handler(_p: Value, _c: Value) -> Result<Value, String> {{ Ok(json!(S)) }}",
        uuid::Uuid::new_v4()
    );
    let hash = schemas::script_hash(Language::Rust, &source);
    compiler
        .compile(&hash, &source, "{}")
        .await
        .map_err(|e| e.diagnostics)
}

#[tokio::test]
async fn sources_cannot_include_host_files() {
    let compiler = compiler().await;
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    for path in ["/etc/passwd", "/etc/hostname", "/root/.bashrc"] {
        let diagnostics = include(&compiler, path)
            .await
            .expect_err("a host file must not compile in");
        assert!(diagnostics.contains(path), "{diagnostics}");
        assert!(!diagnostics.contains(passwd.lines().next().unwrap()));
    }
    // What works: a handler that includes nothing.
    let plain = "fn handler(p: Value, _c: Value) -> Result<Value, String> { Ok(p) }";
    let hash = schemas::script_hash(Language::Rust, plain);
    compiler.compile(&hash, plain, "{}").await.unwrap();
}

#[tokio::test]
async fn sources_cannot_reach_the_worker_through_proc() {
    let compiler = compiler().await;
    let worker = std::process::id();
    for file in ["cmdline", "status", "environ", "root/etc/passwd"] {
        let path = format!("/proc/{worker}/{file}");
        let diagnostics = include(&compiler, &path)
            .await
            .expect_err("the worker's /proc must not be visible");
        assert!(diagnostics.contains(&path), "{diagnostics}");
    }
}

#[tokio::test]
async fn sources_cannot_read_another_sandbox_through_proc_root() {
    let launcher = NodeLauncher::new(&NodeOptions::default()).unwrap();
    let pool = Pool::start(Box::new(launcher), 1).await.unwrap();
    let leave = Invocation::new(
        Language::Nodejs,
        "require('fs').writeFileSync('/tmp/left-by-a-tenant', 'tenant secret 51f0'); return 1;"
            .to_owned(),
        "{}".to_owned(),
        "{}".to_owned(),
        Duration::from_secs(10),
    )
    .unwrap();
    let execution = pool.execute(&leave).await.unwrap();
    assert_eq!(execution.outcome.unwrap(), "1");
    // Every process of the pool's sandboxes: the launchers and the runtime.
    let pids: Vec<u32> = pool
        .pids()
        .into_iter()
        .flat_map(|pid| {
            let children = format!("/proc/{pid}/task/{pid}/children");
            let mut all = vec![pid];
            let mut queue = vec![children];
            while let Some(file) = queue.pop() {
                for child in std::fs::read_to_string(&file)
                    .unwrap_or_default()
                    .split_whitespace()
                {
                    let child: u32 = child.parse().unwrap();
                    all.push(child);
                    queue.push(format!("/proc/{child}/task/{child}/children"));
                }
            }
            all
        })
        .collect();
    assert!(pids.len() >= 3, "{pids:?}");
    let compiler = compiler().await;
    for pid in pids {
        match include(&compiler, &format!("/proc/{pid}/root/tmp/left-by-a-tenant")).await {
            Err(diagnostics) => assert!(!diagnostics.contains("51f0"), "{diagnostics}"),
            Ok(_) => panic!("compiled in the file another sandbox holds, through pid {pid}"),
        }
    }
    assert_eq!(
        pool.execute(&leave).await.unwrap().outcome.unwrap(),
        "1",
        "the pool still serves"
    );
}
