//! Hostile Python scripts: what `-I -S` and any in-language restriction
//! cannot stop (ctypes, `__subclasses__` walks, os.fork) still meets the
//! OS sandbox.

use super::*;

/// Python: the outcome of `attempt()` for each case as a string, so one job
/// can try many things: `"ok: …"` or `"<ExceptionType>: …"`.
const TRY_ALL: &str = "def attempt(f):
    try:
        return 'ok: ' + str(f())
    except BaseException as e:
        return type(e).__name__ + ': ' + str(e)
";

fn all_failed(execution: &Execution) -> Vec<String> {
    let outcomes: Vec<String> = serde_json::from_value(result(execution)).unwrap();
    for outcome in &outcomes {
        assert!(
            !outcome.starts_with("ok"),
            "an attempt succeeded: {outcomes:?}"
        );
    }
    outcomes
}

#[tokio::test]
async fn python_cpu_loop_times_out() {
    let f = Fixture::python(1).await;
    let execution = f.run_for("while True:\n    pass", json!({}), 500).await;
    assert_eq!(error(&execution).code, ErrorCode::Timeout);
    f.still_works().await;
}

#[tokio::test]
async fn python_memory_bomb_hits_the_memory_limit() {
    let f = Fixture::python(1).await;
    let script = "blocks = []\nwhile True:\n    blocks.append(bytearray(16 << 20))";
    let execution = f.run(script, json!({})).await;
    assert_eq!(
        error(&execution).code,
        ErrorCode::MemoryLimit,
        "{execution:?}"
    );
    f.still_works().await;
}

#[tokio::test]
async fn python_cannot_start_processes() {
    let f = Fixture::python(1).await;
    let script = format!(
        "{TRY_ALL}import os, subprocess
result = [
    attempt(lambda: subprocess.run(['/bin/true']).returncode),
    attempt(lambda: subprocess.check_output(['cat', '/etc/hostname'])),
    attempt(os.fork),
    attempt(lambda: os.posix_spawn('/bin/true', ['true'], {{}})),
    attempt(lambda: os.system('true') == 0 or (_ for _ in ()).throw(OSError('system failed'))),
]"
    );
    let outcomes = all_failed(&f.run(&script, json!({})).await);
    assert!(
        outcomes[2].contains("Operation not permitted"),
        "{outcomes:?}"
    );
    f.still_works().await;
}

#[tokio::test]
async fn python_sees_no_host_files_and_no_environment() {
    let f = Fixture::python(1).await;
    let script = format!(
        "{TRY_ALL}import os
def read(path):
    with open(path, 'rb') as file:
        return file.read()[:40]
result = [
    attempt(lambda: read('/etc/shadow')),
    attempt(lambda: read('/etc/passwd')),
    attempt(lambda: read('/root/.bash_history')),
    attempt(lambda: read('/proc/1/root/etc/shadow')),
    attempt(lambda: read('/var/lib/postgresql/15/main/PG_VERSION')),
    # Python coerces the C locale itself (PEP 538) by setting LC_CTYPE.
    attempt(lambda: {{k: v for k, v in os.environ.items() if k != 'LC_CTYPE'}}
            or (_ for _ in ()).throw(KeyError('empty'))),
    attempt(lambda: read('/proc/self/environ') or (_ for _ in ()).throw(OSError('empty'))),
    attempt(lambda: read('/proc/1/environ') or (_ for _ in ()).throw(OSError('empty'))),
]"
    );
    all_failed(&f.run(&script, json!({})).await);
    f.still_works().await;
}

#[tokio::test]
async fn python_has_no_network() {
    for port in [5432, 6379, 4222] {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "the service on {port} runs on the host"
        );
    }
    let f = Fixture::python(1).await;
    let host = host_ip().map_or_else(|| "127.0.0.1".to_owned(), |ip| ip.to_string());
    let script = format!(
        "{TRY_ALL}import socket, urllib.request
def connect(host, port):
    with socket.create_connection((host, port), timeout=3):
        return 'connected'
result = [
    attempt(lambda: connect('127.0.0.1', 5432)),
    attempt(lambda: connect('127.0.0.1', 6379)),
    attempt(lambda: connect('127.0.0.1', 4222)),
    attempt(lambda: connect('{host}', 5432)),
    attempt(lambda: urllib.request.urlopen('http://127.0.0.1:4222', timeout=3).read()),
]"
    );
    all_failed(&f.run(&script, json!({})).await);
    f.still_works().await;
}

#[tokio::test]
async fn python_writes_only_to_scratch() {
    let f = Fixture::python(1).await;
    let script = format!(
        "{TRY_ALL}import os
def write(path):
    with open(path, 'w') as file:
        file.write('x')
    return path
outside = [attempt(lambda: write(p)) for p in ['/usr/evil', '/evil', '/etc/evil', '/dev/evil']]
scratch = write('/tmp/fine')
result = {{'outside': outside, 'scratch': scratch}}"
    );
    let execution = f.run(&script, json!({})).await;
    let value = result(&execution);
    assert_eq!(value["scratch"], "/tmp/fine");
    for outcome in value["outside"].as_array().unwrap() {
        assert!(!outcome.as_str().unwrap().starts_with("ok"), "{value}");
    }
    assert!(!Path::new("/usr/evil").exists() && !Path::new("/evil").exists());
    f.still_works().await;
}

#[tokio::test]
async fn python_subclasses_walk_reaches_nothing_outside() {
    let f = Fixture::python(1).await;
    // The classic escape from a restricted Python: find Popen among the
    // subclasses of object and run a command with it.
    let script = format!(
        "{TRY_ALL}import subprocess
popen = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0]
result = [
    attempt(lambda: popen(['cat', '/etc/shadow'], stdout=-1).communicate()[0]),
    attempt(lambda: ().__class__.__base__.__subclasses__()[0].__init__.__globals__),
    attempt(lambda: __builtins__['open']('/etc/shadow').read()
            if isinstance(__builtins__, dict) else __builtins__.open('/etc/shadow').read()),
]"
    );
    all_failed(&f.run(&script, json!({})).await);
    f.still_works().await;
}

#[tokio::test]
async fn python_ctypes_calls_are_still_confined() {
    let f = Fixture::python(1).await;
    let script = "import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
result = {
    'fork': libc.fork(),
    'setuid0': libc.setuid(0),
    'unshare_user': libc.unshare(0x10000000),
    'mount': libc.mount(b'none', b'/usr', b'tmpfs', 0, None),
    'uid': os.getuid(),
}";
    let execution = f.run(script, json!({})).await;
    let value = result(&execution);
    for call in ["fork", "setuid0", "unshare_user", "mount"] {
        assert_eq!(value[call], -1, "{call} must fail: {value}");
    }
    assert_ne!(value["uid"], 0, "{value}");
    f.still_works().await;
}

#[tokio::test]
async fn python_signals_reach_nothing_outside() {
    let f = Fixture::python(2).await;
    let script = format!(
        "{TRY_ALL}import os, signal
result = [
    attempt(lambda: os.kill({worker}, signal.SIGKILL)),
    attempt(lambda: os.kill(os.getppid(), signal.SIGKILL)),
    attempt(lambda: os.kill(-1, signal.SIGKILL)),
]",
        worker = std::process::id()
    );
    // Killing every process it can see ends its own sandbox at worst.
    let _ = f.run(&script, json!({})).await;
    f.still_works().await;
}

#[tokio::test]
async fn python_deep_recursion_is_an_error() {
    let f = Fixture::python(1).await;
    let script = "import sys\nsys.setrecursionlimit(10**7)\ndef down(n):\n    return down(n + 1)\nresult = down(0)";
    let execution = f.run(script, json!({})).await;
    let code = error(&execution).code;
    assert!(
        matches!(code, ErrorCode::RuntimeError | ErrorCode::MemoryLimit),
        "{execution:?}"
    );
    f.still_works().await;
}

#[tokio::test]
async fn python_100_mb_of_output_is_bounded() {
    let f = Fixture::python(1).await;
    let script = "line = 'x' * 1000\nfor _ in range(100_000):\n    print(line)\nresult = 'done'";
    let execution = f.run(script, json!({})).await;
    assert_eq!(result(&execution), json!("done"));
    assert_eq!(
        execution.logs.last().map(String::as_str),
        Some("[logs truncated]")
    );
    let bytes: usize = execution.logs.iter().map(String::len).sum();
    assert!(bytes <= 1024 * 1024 + 64, "{bytes} bytes of logs");
    f.still_works().await;
}
