//! A real `nats-server -js` on a free loopback port, with its store in a directory that outlives
//! restarts.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts the binary; `/usr/sbin` is not on every user's PATH.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"];

/// The `nats-server` binary: `$NATS_SERVER`, else on PATH or in the sbin directories.
fn binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            "nats-server not found (install it with `apt-get install nats-server`, or run \
             scripts/install-deps.sh, or set NATS_SERVER)"
                .to_owned()
        })
}

/// A running `nats-server -js`; SIGKILLed on drop.
pub(crate) struct NatsServer {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    store: PathBuf,
}

impl NatsServer {
    /// Starts a server whose JetStream store is `store`.
    pub(crate) fn start(store: &Path) -> Result<NatsServer, String> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        drop(listener);
        let mut server = NatsServer {
            binary: binary()?,
            child: None,
            port,
            store: store.to_path_buf(),
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new(&self.binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let child = self.child.insert(child);
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("nats-server exited at start: {status}"));
            }
            if Instant::now() > deadline {
                return Err("nats-server did not listen within 30 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The client URL.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server and starts it again on the same port and store.
    pub(crate) fn restart(&mut self, down_for: Duration) -> Result<(), String> {
        self.kill();
        std::thread::sleep(down_for);
        self.spawn()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
