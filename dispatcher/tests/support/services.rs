//! Private PostgreSQL and NATS servers a test can stop and start again,
//! on free loopback ports with their data in a temporary directory.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn until_listening(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "port {port} never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster of its own, run as the `postgres` user.
pub struct PrivatePostgres {
    dir: PathBuf,
    pub port: u16,
}

impl PrivatePostgres {
    pub async fn start() -> Self {
        let dir = scratch("lt-pg");
        let port = free_port();
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        assert!(chown.unwrap().success());
        let data = dir.join("data");
        let init = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{PG_BIN}/initdb"),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .status();
        assert!(init.unwrap().success(), "initdb");
        let pg = Self { dir, port };
        pg.resume().await;
        pg
    }

    /// The URL of its `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let status = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/pg_ctl"), "-D"])
            .arg(self.dir.join("data"))
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("log"))
            .args(args)
            .stdout(Stdio::null())
            .status();
        assert!(status.unwrap().success(), "pg_ctl {args:?}");
    }

    /// Stops it (fast shutdown: connections are cut).
    pub fn pause(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
    }

    pub async fn resume(&self) {
        self.pg_ctl(&["-w", "start"]);
        until_listening(self.port).await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{PG_BIN}/pg_ctl"),
                "-m",
                "immediate",
                "-D",
            ])
            .arg(self.dir.join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A nats-server with JetStream of its own.
pub struct PrivateNats {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl PrivateNats {
    pub async fn start() -> Self {
        let mut nats = Self {
            dir: scratch("lt-nats"),
            port: free_port(),
            child: None,
        };
        nats.resume().await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (its JetStream store stays on disk).
    pub fn pause(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn resume(&mut self) {
        // The store limit is set explicitly: by default it follows the free
        // disk space, which may be less than the streams ask for.
        let config = self.dir.join("nats.conf");
        let text = format!(
            "listen: 127.0.0.1:{}
jetstream {{ store_dir: \"{}\", max_file_store: 64GB }}
",
            self.port,
            self.dir.join("store").display()
        );
        std::fs::write(&config, text).unwrap();
        let child = Command::new("/usr/sbin/nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server");
        self.child = Some(child);
        until_listening(self.port).await;
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.pause();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
