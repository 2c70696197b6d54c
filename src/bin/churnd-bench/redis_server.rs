//! A private redis-server per benchmark, on a free port, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use redis::aio::MultiplexedConnection;

/// A private redis-server, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile_dir::TempDir,
}

/// A temporary directory without a dev-dependency: created under the system's temporary
/// space, removed on drop.
pub mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(label: &str) -> std::io::Result<Self> {
            let path = std::env::temp_dir().join(format!(
                "churnd-bench-{label}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&path)?;
            Ok(Self(path))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl RedisServer {
    pub fn start(binary: &PathBuf) -> Result<Self> {
        Self::launch(binary, false)
    }

    /// A `cluster-enabled` node, without slots until a cluster is made of it.
    pub fn start_cluster_node(binary: &PathBuf) -> Result<Self> {
        Self::launch(binary, true)
    }

    fn launch(binary: &PathBuf, cluster: bool) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile_dir::TempDir::new("redis")?;
        let mut cmd = Command::new(binary);
        if cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(dir.path().join("nodes.conf"));
        }
        let child = cmd
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {} (install redis-server)", binary.display()))?;
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ping = redis::Client::open(server.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ping.is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("redis-server did not start on port {port}")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `host:port`, as `redis-cli --cluster create` takes it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn conn(&self) -> Result<MultiplexedConnection> {
        connect(&self.url()).await
    }
}

/// A connection whose response timeout (60 s) outlasts every BLOCK used here.
pub async fn connect(url: &str) -> Result<MultiplexedConnection> {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
