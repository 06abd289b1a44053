//! Helpers shared by the runtime test files.
// Each test binary uses some of these; helpers are `pub` across its modules.
#![allow(dead_code, unreachable_pub)]

use std::{path::Path, time::Duration};

/// `pid` and every process below it.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parent_of = |p: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        let after_name = &stat[stat.rfind(')')? + 2..];
        after_name.split(' ').nth(1)?.parse::<u32>().ok()
    };
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut found = vec![pid];
    let mut grew = true;
    while grew {
        grew = false;
        for &p in &all {
            if !found.contains(&p) && parent_of(p).is_some_and(|parent| found.contains(&parent)) {
                found.push(p);
                grew = true;
            }
        }
    }
    found
}

/// Waits until a script running under the runtime process `pid` has created
/// `/tmp/<name>`. Sandboxed, its /tmp is visible from here only through the
/// /proc entry of the process (the launcher's grandchild).
pub async fn wait_for_scratch_file(pid: u32, name: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !descendants(pid)
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}/root/tmp/{name}")).exists())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("/tmp/{name} did not appear under process {pid}"));
}
