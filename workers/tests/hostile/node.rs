//! Hostile Node.js scripts.

use super::*;

#[tokio::test]
async fn node_cpu_loop_times_out() {
    let f = Fixture::node(1).await;
    let execution = f.run_for("while (true) {}", json!({}), 500).await;
    assert_eq!(error(&execution).code, ErrorCode::Timeout);
    f.still_works().await;
}

#[tokio::test]
async fn node_sleeping_forever_times_out() {
    let f = Fixture::node(1).await;
    let script = "await new Promise(() => {}); return 1;";
    let execution = f.run_for(script, json!({}), 500).await;
    assert_eq!(error(&execution).code, ErrorCode::Timeout);
    f.still_works().await;
}

#[tokio::test]
async fn node_heap_growth_hits_the_memory_limit() {
    let f = Fixture::node(1).await;
    let script = "const a = []; while (true) a.push(new Array(100000).fill(1.5));";
    let execution = f.run(script, json!({})).await;
    let e = error(&execution);
    assert_eq!(e.code, ErrorCode::MemoryLimit, "{e:?}");
    assert_eq!(e.message, "script exceeded its memory limit of 64 MB");
    f.still_works().await;
}

#[tokio::test]
async fn node_buffers_outside_the_heap_hit_the_memory_limit() {
    let f = Fixture::node(1).await;
    let script = "const b = []; while (true) b.push(Buffer.alloc(16 << 20, 1));";
    let execution = f.run(script, json!({})).await;
    assert_eq!(error(&execution).code, ErrorCode::MemoryLimit);
    f.still_works().await;
}

#[tokio::test]
async fn node_cannot_start_processes() {
    let f = Fixture::node(1).await;
    std::fs::write(std::env::temp_dir().join("hostile-child.js"), "").unwrap();
    let script = "const cp = require('child_process');
const attempt = (start) => { try { start(); return 'started'; } catch (e) { return e.code; } };
require('fs').writeFileSync('/tmp/child.js', '');
const viaCallback = await new Promise((resolve) => {
  try { cp.exec('echo hi', (e) => resolve(e ? e.code : 'started')); } catch (e) { resolve(e.code); }
});
return [
  attempt(() => cp.execSync('echo hi')),
  attempt(() => { const r = cp.spawnSync('/bin/true'); if (r.error) throw r.error; }),
  attempt(() => cp.spawn('/bin/true')),
  attempt(() => cp.fork('/tmp/child.js')),
  attempt(() => cp.execFileSync('/usr/bin/node', ['-e', '1'])),
  viaCallback,
];";
    let execution = f.run(script, json!({})).await;
    let outcomes = result(&execution);
    for outcome in outcomes.as_array().unwrap() {
        assert_ne!(outcome, "started", "{outcomes}");
    }
    assert_eq!(outcomes[0], "EPERM", "{outcomes}");
    f.still_works().await;
}

#[tokio::test]
async fn node_fork_bomb_in_a_loop_fails() {
    let f = Fixture::node(1).await;
    let script = "const cp = require('child_process'); let started = 0, failed = 0;
for (let i = 0; i < 1000; i++) {
  try { cp.spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)']); started++; }
  catch (e) { failed++; }
}
return { started, failed };";
    let execution = f.run(script, json!({})).await;
    assert_eq!(result(&execution), json!({"started": 0, "failed": 1000}));
    f.still_works().await;
}

#[tokio::test]
async fn node_worker_threads_bomb_is_bounded() {
    let f = Fixture::node(1).await;
    let script = "const { Worker } = require('worker_threads'); const workers = [];
for (let i = 0; i < 500; i++) workers.push(new Worker('setInterval(() => {}, 1000)', { eval: true }));
await new Promise((r) => setTimeout(r, 3000));
return workers.length;";
    let execution = f.run(script, json!({})).await;
    // Threads count against the pids and memory limits of the sandbox:
    // the runtime is killed (or the workers fail) long before 500 threads run.
    match &execution.outcome {
        Err(e) => assert!(
            matches!(e.code, ErrorCode::MemoryLimit | ErrorCode::RuntimeError),
            "{e:?}"
        ),
        Ok(json) => panic!("500 workers ran: {json}"),
    }
    f.still_works().await;
}

#[tokio::test]
async fn node_threads_are_bounded_by_the_pids_limit() {
    // Memory to spare, so the number of tasks is what runs out.
    let f = Fixture::node_with_memory(1, 1024).await;
    let script = "const { Worker } = require('worker_threads');
const resourceLimits = { maxOldGenerationSizeMb: 4, maxYoungGenerationSizeMb: 1, stackSizeMb: 1 };
for (let i = 0; i < 200; i++) {
  try { new Worker('setInterval(() => {}, 1000)', { eval: true, resourceLimits }); }
  catch (e) { return { started: i, error: e.message }; }
}
return { started: 200 };";
    let before = f.pool.pids();
    let execution = f.run(script, json!({})).await;
    let outcome = result(&execution);
    assert_eq!(outcome["error"], "EAGAIN", "{outcome}");
    assert!(outcome["started"].as_u64().unwrap() < 64, "{outcome}");
    f.still_works().await;
    // The threads the script left running went with the process it ran in.
    assert_ne!(f.pool.pids(), before);
}

#[tokio::test]
async fn node_deep_recursion_is_a_runtime_error() {
    let f = Fixture::node(1).await;
    let script = "const down = (n) => down(n + 1) + 1; return down(0);";
    let execution = f.run(script, json!({})).await;
    let e = error(&execution);
    assert_eq!(e.code, ErrorCode::RuntimeError);
    assert!(e.message.starts_with("RangeError"), "{e:?}");
    f.still_works().await;
}

#[tokio::test]
async fn node_100_mb_of_output_is_bounded() {
    let f = Fixture::node(1).await;
    let script = "const line = 'x'.repeat(1000);
for (let i = 0; i < 100000; i++) console.log(line);
const chunk = 'y'.repeat(1 << 20);
for (let i = 0; i < 100; i++) process.stderr.write(chunk);
return 'answered';";
    let execution = f.run(script, json!({})).await;
    assert_eq!(result(&execution), json!("answered"));
    let bytes: usize = execution.logs.iter().map(String::len).sum();
    assert!(bytes <= 1024 * 1024 + 100, "logs of {bytes} bytes");
    assert_eq!(execution.logs.last().unwrap(), "[logs truncated]");
    f.still_works().await;
}

#[tokio::test]
async fn node_100_mb_result_is_an_error() {
    // Enough heap for the string and its JSON, so the result limit decides.
    let f = Fixture::node_with_memory(1, 320).await;
    let execution = f.run("return 'x'.repeat(100 << 20);", json!({})).await;
    let e = error(&execution);
    assert_eq!(e.code, ErrorCode::RuntimeError);
    assert!(e.message.contains("result too large"), "{e:?}");
    f.still_works().await;
}

#[tokio::test]
async fn node_sees_no_host_files() {
    let f = Fixture::node(1).await;
    let cwd = std::env::current_dir().unwrap();
    let manifest = cwd.join("Cargo.toml");
    let script = "const fs = require('fs');
return event.params.paths.map((p) => { try { fs.readFileSync(p); return 'read'; } catch (e) { return e.code; } })
  .concat([fs.readdirSync('/').sort().join(',')]);";
    let paths = [
        "/etc/shadow",
        "/etc/passwd",
        "/etc/hostname",
        "/root/.bash_history",
        manifest.to_str().unwrap(),
        "/proc/1/root/etc/shadow",
        "/dev/mem",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ];
    assert!(Path::new("/etc/passwd").exists() && manifest.exists());
    let execution = f.run(script, json!({ "paths": paths })).await;
    let outcomes = result(&execution);
    let outcomes = outcomes.as_array().unwrap();
    for (path, outcome) in paths.iter().zip(outcomes) {
        assert_eq!(outcome, "ENOENT", "{path}: {outcome}");
    }
    // The root holds the runtime's directories and nothing else of the host.
    let root = outcomes[paths.len()].as_str().unwrap();
    let allowed = [
        "bin", "dev", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr",
    ];
    assert!(root.split(',').all(|d| allowed.contains(&d)), "{root}");
    assert!(root.contains("usr") && root.contains("tmp"), "{root}");
    f.still_works().await;
}

#[tokio::test]
async fn node_sees_no_environment() {
    let f = Fixture::node(1).await;
    assert_eq!(std::env::var("CANARY_DATABASE_URL").unwrap(), CANARY);
    let script = "const fs = require('fs');
const read = (p) => { try { return fs.readFileSync(p, 'latin1'); } catch (e) { return e.code; } };
return { env: process.env, self: read('/proc/self/environ'), init: read('/proc/1/environ'),
         parent: read(`/proc/${process.ppid}/environ`) };";
    let execution = f.run(script, json!({})).await;
    assert_eq!(
        result(&execution),
        json!({"env": {}, "self": "", "init": "", "parent": ""})
    );
    f.still_works().await;
}

#[tokio::test]
async fn node_has_no_network() {
    let f = Fixture::node(1).await;
    // The services really are reachable from the worker itself.
    for port in [5432, 6379, 4222] {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "nothing listens on 127.0.0.1:{port} here"
        );
    }
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let mut targets = vec![
        json!(["127.0.0.1", 5432]),
        json!(["127.0.0.1", 6379]),
        json!(["127.0.0.1", 4222]),
        json!(["::1", 5432]),
    ];
    if let Some(ip) = host_ip() {
        let port = listener.local_addr().unwrap().port();
        assert!(TcpStream::connect((ip, port)).is_ok());
        targets.push(json!([ip.to_string(), port]));
    }
    let execution = f.run(NODE_CONNECT, json!({ "targets": targets })).await;
    let outcomes = result(&execution);
    for outcome in outcomes.as_array().unwrap() {
        assert!(
            ["ECONNREFUSED", "ENETUNREACH", "EADDRNOTAVAIL"].contains(&outcome.as_str().unwrap()),
            "{outcomes}"
        );
    }
    f.still_works().await;
}

#[tokio::test]
async fn node_http_requests_fail() {
    let f = Fixture::node(1).await;
    let script = "const http = require('http');
const get = (url) => new Promise((resolve) => {
  const request = http.get(url, () => resolve('answered'));
  request.setTimeout(3000, () => { request.destroy(); resolve('timeout'); });
  request.on('error', (e) => resolve(e.code));
});
return [await get('http://127.0.0.1:4222/'), await get('http://example.com/')];";
    let execution = f.run(script, json!({})).await;
    let outcomes = result(&execution);
    assert_eq!(outcomes[0], "ECONNREFUSED", "{outcomes}");
    assert!(
        ["EAI_AGAIN", "ENOTFOUND"].contains(&outcomes[1].as_str().unwrap()),
        "{outcomes}"
    );
    f.still_works().await;
}

#[tokio::test]
async fn node_writes_only_to_scratch() {
    let f = Fixture::node(1).await;
    let cwd = std::env::current_dir().unwrap();
    let marker = format!("hostile-{}", uuid::Uuid::new_v4());
    let outside = [
        format!("/usr/{marker}"),
        format!("/{marker}"),
        cwd.join(&marker).to_str().unwrap().to_owned(),
        format!("/proc/{marker}"),
    ];
    let script = "const fs = require('fs');
const write = (p) => { try { fs.writeFileSync(p, 'x'); return 'written'; } catch (e) { return e.code; } };
const outside = event.params.outside.map(write);
fs.writeFileSync('scratch.txt', 'kept');
return { outside, scratch: fs.readFileSync('/tmp/scratch.txt', 'utf8'), cwd: process.cwd() };";
    let execution = f.run(script, json!({ "outside": outside })).await;
    let outcome = result(&execution);
    for (path, code) in outside.iter().zip(outcome["outside"].as_array().unwrap()) {
        assert_ne!(code, "written", "{path}");
        assert!(!Path::new(path).exists(), "{path} exists on the host");
    }
    assert_eq!(outcome["scratch"], "kept");
    assert_eq!(outcome["cwd"], "/tmp");
    f.still_works().await;
}

#[tokio::test]
async fn node_symlinks_in_scratch_reach_no_host_file() {
    let f = Fixture::node(2).await;
    let worker = std::process::id();
    let other = f.runtime_pids()[1];
    let script = "const fs = require('fs');
const via = (target, i) => {
  const link = `/tmp/link${i}`;
  try { fs.symlinkSync(target, link); } catch (e) { return 'symlink ' + e.code; }
  try { return fs.readFileSync(link, 'latin1').slice(0, 20); } catch (e) { return e.code; }
};
return event.params.targets.map(via);";
    let targets = [
        "/etc/shadow".to_owned(),
        format!("/proc/{worker}/root/etc/shadow"),
        format!("/proc/{worker}/environ"),
        format!("/proc/{other}/root/tmp"),
        "/proc/1/root/../../etc/shadow".to_owned(),
    ];
    let execution = f.run(script, json!({ "targets": targets })).await;
    let outcomes = result(&execution);
    for (target, outcome) in targets.iter().zip(outcomes.as_array().unwrap()) {
        assert_eq!(outcome, "ENOENT", "{target}");
    }
    f.still_works().await;
}

#[tokio::test]
async fn node_signals_reach_nothing_outside() {
    let f = Fixture::node(2).await;
    let before = f.pool.pids();
    let script = "const kill = (pid, signal) => { try { process.kill(pid, signal); return 'sent'; } catch (e) { return e.code; } };
const sent = [kill(process.ppid, 'SIGKILL'), kill(1, 'SIGKILL'), kill(-1, 'SIGKILL'),
              kill(event.params.worker, 'SIGKILL'), kill(event.params.other, 'SIGKILL')];
await new Promise((r) => setTimeout(r, 100));
return sent;";
    let params = json!({"worker": std::process::id(), "other": before[1]});
    let execution = f.run(script, params).await;
    // Whatever the signals did inside the sandbox, the worker lives (this
    // test is still running) and the other sandbox was not touched.
    if let Ok(json) = &execution.outcome {
        let sent: Value = serde_json::from_str(json).unwrap();
        assert_eq!(sent[3], "ESRCH", "{sent}");
        assert_eq!(sent[4], "ESRCH", "{sent}");
    }
    f.still_works().await;
    let after = f.pool.pids();
    assert!(
        before.iter().filter(|p| after.contains(p)).count() >= 1,
        "{before:?} → {after:?}"
    );
}

#[tokio::test]
async fn node_process_from_the_constructor_is_still_sandboxed() {
    let f = Fixture::node(1).await;
    let script = "const p = this.constructor.constructor('return process')();
const fs = p.mainModule ? p.mainModule.require('fs') : require('fs');
let shadow; try { fs.readFileSync('/etc/shadow'); shadow = 'read'; } catch (e) { shadow = e.code; }
const socket = await new Promise((resolve) => {
  const s = require('net').connect(5432, '127.0.0.1');
  s.on('connect', () => resolve('connected')); s.on('error', (e) => resolve(e.code));
});
return { env: p.env, uid: p.getuid(), shadow, socket };";
    let execution = f.run(script, json!({})).await;
    let mut outcome = result(&execution);
    let uid = outcome["uid"].take().as_u64().unwrap();
    assert!(uid >= 2_000_000_000, "a sandbox uid, not {uid}");
    assert_eq!(
        outcome,
        json!({"env": {}, "uid": null, "shadow": "ENOENT", "socket": "ECONNREFUSED"})
    );
    f.still_works().await;
}

#[tokio::test]
async fn node_cannot_gain_privileges() {
    let f = Fixture::node(1).await;
    let script = "const attempt = (f) => { try { f(); return 'done'; } catch (e) { return e.code || e.message; } };
const status = require('fs').readFileSync('/proc/self/status', 'utf8');
const field = (name) => status.split('\\n').find((l) => l.startsWith(name + ':')).split(/\\s+/)[1];
return {
  setuid: attempt(() => process.setuid(0)),
  setgid: attempt(() => process.setgid(0)),
  chroot: typeof process.chroot,
  caps: field('CapEff'), bounding: field('CapBnd'), nnp: field('NoNewPrivs'), seccomp: field('Seccomp'),
};";
    let execution = f.run(script, json!({})).await;
    assert_eq!(
        result(&execution),
        json!({
            "setuid": "EINVAL", "setgid": "EINVAL", "chroot": "undefined",
            "caps": "0000000000000000", "bounding": "0000000000000000",
            "nnp": "1", "seccomp": "2",
        })
    );
    // Outside its namespace the runtime is an unprivileged uid, not root.
    for pid in f.runtime_pids() {
        let uid = status_field(pid, "Uid");
        let real: u32 = uid.split('\t').next().unwrap().parse().unwrap();
        assert!(real >= 2_000_000_000, "{uid}");
        assert_eq!(uid, [real; 4].map(|u| u.to_string()).join("\t"));
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    }
    f.still_works().await;
}

#[tokio::test]
async fn node_cannot_see_other_pool_processes() {
    let f = Fixture::node(2).await;
    let other = f.runtime_pids();
    assert_eq!(other.len(), 2);
    let script = "const fs = require('fs');
const read = (p) => { try { fs.readFileSync(p); return 'read'; } catch (e) { return e.code; } };
const pids = fs.readdirSync('/proc').filter((n) => /^\\d+$/.test(n));
return { pids, reads: event.params.others.flatMap((pid) => [read(`/proc/${pid}/mem`), read(`/proc/${pid}/environ`)]) };";
    let execution = f.run(script, json!({ "others": other })).await;
    let outcome = result(&execution);
    assert_eq!(outcome["pids"], json!(["1", "2"]));
    for read in outcome["reads"].as_array().unwrap() {
        assert_eq!(read, "ENOENT");
    }
    f.still_works().await;
}

#[tokio::test]
async fn node_filling_scratch_ends_with_enospc() {
    let f = Fixture::node(1).await;
    let script = "const fs = require('fs'); const chunk = Buffer.alloc(1 << 20, 1); let mb = 0;
try { for (;;) { fs.appendFileSync('/tmp/fill', chunk); mb++; } } catch (e) { return { code: e.code, mb }; }";
    let execution = f.run(script, json!({})).await;
    let outcome = result(&execution);
    assert_eq!(outcome["code"], "ENOSPC");
    assert!(
        outcome["mb"].as_u64().unwrap() <= SCRATCH_MB as u64,
        "{outcome}"
    );
    f.still_works().await;
}

#[tokio::test]
async fn node_abort_is_a_runtime_error() {
    let f = Fixture::node(1).await;
    let execution = f.run("process.abort();", json!({})).await;
    let e = error(&execution);
    assert_eq!(e.code, ErrorCode::RuntimeError);
    assert!(
        e.message.starts_with("runtime process exited unexpectedly"),
        "{e:?}"
    );
    f.still_works().await;
}

#[tokio::test]
async fn node_native_bindings_cannot_spawn_either() {
    let f = Fixture::node(1).await;
    let script = "const { spawn } = process.binding('spawn_sync');
const r = spawn({ file: '/bin/true', args: ['/bin/true'], stdio: [], envPairs: [] });
return r.error;";
    let execution = f.run(script, json!({})).await;
    // Either the binding is refused, or the spawn fails with -EPERM (-1).
    match &execution.outcome {
        Ok(json) => assert_eq!(json, "-1"),
        Err(e) => assert_eq!(e.code, ErrorCode::RuntimeError),
    }
    f.still_works().await;
}

#[tokio::test]
async fn node_sandboxes_die_with_the_worker() {
    let mut worker = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "node::worker_to_be_killed",
            "--nocapture",
        ])
        .env(WORKER_TO_BE_KILLED, "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let pids: Vec<u32> = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(pids) = line.strip_prefix("sandbox pids: ") {
                return serde_json::from_str(pids).unwrap();
            }
        }
        panic!("the worker ended without starting its pool");
    })
    .await
    .expect("the worker starts its pool");
    assert!(
        pids.len() >= 6 && pids.len().is_multiple_of(3),
        "two sandboxes (and maybe a spare) of bwrap, bwrap and node: {pids:?}"
    );

    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat[stat.rfind(')').unwrap()..].starts_with(") Z"))
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while pids.iter().any(alive) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("sandboxes outlived their worker: {pids:?}"));
}

const WORKER_TO_BE_KILLED: &str = "HOSTILE_WORKER_TO_BE_KILLED";

/// A worker for `node_sandboxes_die_with_the_worker`, run in a process of its
/// own: starts a pool, keeps both runtimes busy in endless loops (so they do
/// not simply exit when their stdin closes), prints the pids in its
/// sandboxes and waits for SIGKILL.
#[tokio::test]
#[ignore = "started by node_sandboxes_die_with_the_worker"]
async fn worker_to_be_killed() {
    if std::env::var_os(WORKER_TO_BE_KILLED).is_none() {
        return;
    }
    let f = Fixture::node(2).await;
    let spin = Invocation::new(
        Language::Nodejs,
        "while (true) {}".to_owned(),
        "{}".to_owned(),
        "{}".to_owned(),
        Duration::from_secs(120),
    )
    .unwrap();
    for _ in 0..2 {
        let (pool, spin) = (f.pool.clone(), spin.clone());
        tokio::spawn(async move { pool.execute(&spin).await });
    }
    let running = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat[stat.rfind(')').unwrap()..].starts_with(") R"))
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        while f.runtime_pids().len() < 2 || !f.runtime_pids().iter().all(running) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both runtimes run the endless loop");
    let pids: Vec<u32> = f.pool.pids().into_iter().flat_map(descendants).collect();
    println!("sandbox pids: {}", serde_json::to_string(&pids).unwrap());
    std::future::pending::<()>().await;
}

// ----------------------------------------------------------- measurement --

/// What the sandbox costs: start-up of a pool of 2 and 2,000 trivial jobs,
/// with and without it. Prints the figures; run with
/// `cargo test -p workers --test hostile -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn sandbox_cost() {
    use workers::sandbox::Sandbox;
    for (name, sandbox) in [("off", Sandbox::disabled()), ("on", Sandbox::default())] {
        let options = NodeOptions {
            sandbox,
            ..NodeOptions::default()
        };
        let started = std::time::Instant::now();
        let launcher = NodeLauncher::new(&options).unwrap();
        let pool = Pool::start(Box::new(launcher), 2).await.unwrap();
        let spawn = started.elapsed();
        let job = Invocation::new(
            Language::Nodejs,
            "return event.params.a + event.params.b;".to_owned(),
            json!({"a": 1, "b": 2}).to_string(),
            "{}".to_owned(),
            Duration::from_secs(10),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let lanes = (0..2).map(|_| {
            let (pool, job) = (pool.clone(), job.clone());
            tokio::spawn(async move {
                for _ in 0..1000 {
                    let execution = pool.execute(&job).await.unwrap();
                    assert_eq!(execution.outcome.unwrap(), "3");
                }
            })
        });
        for lane in futures::future::join_all(lanes).await {
            lane.unwrap();
        }
        let total = started.elapsed();
        println!(
            "sandbox {name}: pool of 2 ready in {spawn:?}; 2000 jobs in {total:?} ({:?} per job)",
            total / 2000
        );
        pool.shutdown(Duration::from_secs(1)).await;
    }
}
