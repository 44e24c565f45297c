//! Test harness shared by the workspace's integration tests: a real
//! `redis-server` per test, on a free port of 127.0.0.1, killed when the
//! test drops it. Tests never touch a Redis they did not start (in
//! particular not one on the default port 6379).
//!
//! Blocking on purpose: starting, stopping and querying take milliseconds,
//! and a synchronous API is usable from sync and async tests alike.
//!
//! Also the fixtures several test suites share: [`comment`] and
//! [`eventually`].

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danmaku_proto::{Danmaku, Mode};

pub use redis;

use redis::FromRedisValue;

/// How long a fresh `redis-server` may take to answer its first PING.
const STARTUP_PATIENCE: Duration = Duration::from_secs(10);
/// Fresh ports tried before giving up, in case another test grabs one.
const PORT_ATTEMPTS: usize = 5;

/// Why the harness could not do what a test asked.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// The process could not be spawned, or a scratch file not written.
    #[error("redis-server: {0}")]
    Io(#[from] std::io::Error),
    /// The process exited before answering; its log tail says why.
    #[error("redis-server exited during startup: {0}")]
    Exited(String),
    /// The process runs but never answered PING.
    #[error("redis-server did not answer PING within {0:?}")]
    NotReady(Duration),
    /// A command sent with [`RedisServer::redis_cli`] failed.
    #[error("redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// The server is stopped; `restart` it first.
    #[error("redis-server is stopped")]
    Stopped,
    /// `redis-server` is not installed and could not be installed here.
    #[error("redis-server is not installed: {0}")]
    Missing(String),
}

/// Makes sure `redis-server` is on the `PATH`, so that the README's one test
/// command works on a fresh Debian machine (see [`ensure_debian_package`]).
fn ensure_redis_server() -> Result<(), TestkitError> {
    static CHECKED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            ensure_debian_package("redis-server", || runs("redis-server", &["--version"]))
        })
        .clone()
        .map_err(TestkitError::Missing)
}

/// Whether `program args` runs and exits 0.
pub fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure what `installed` checks for is there: as root, installs
/// Debian's `package` when it is missing (concurrent test binaries queue on
/// one lock file, so apt runs once at a time); otherwise says the one line
/// to run. `Err` holds that line.
pub fn ensure_debian_package(package: &str, installed: impl Fn() -> bool) -> Result<(), String> {
    if installed() {
        return Ok(());
    }
    let hint = format!("run `apt-get install -y {package}` as root");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !root {
        return Err(hint);
    }
    eprintln!("{package} is missing: installing Debian's package");
    let script = format!(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}"
    );
    let lock = "/tmp/danmaku-testkit-apt.lock";
    // Another binary may have installed it while this one waited.
    let done = installed()
        || Command::new("flock")
            .args([lock, "sh", "-c", &script])
            .status()
            .is_ok_and(|s| s.success());
    if done && installed() {
        Ok(())
    } else {
        Err(format!("installing it failed; {hint}"))
    }
}

/// A `redis-server` process owned by a test: no persistence, loopback only,
/// killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    extra_args: Vec<String>,
    /// Scratch directory for the working dir and the log file.
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> Result<RedisServer, TestkitError> {
        RedisServer::start_with(&[])
    }

    /// Like [`RedisServer::start`], with extra command-line arguments
    /// (`["--client-output-buffer-limit", "pubsub 64kb 0 0"]`, say) that are
    /// kept for restarts too.
    pub fn start_with(extra_args: &[&str]) -> Result<RedisServer, TestkitError> {
        ensure_redis_server()?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let dir =
                std::env::temp_dir().join(format!("danmaku-testkit-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let mut server = RedisServer {
                port,
                extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
                dir,
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                // Most likely someone else took the port in between: retry.
                Err(e @ TestkitError::Exited(_)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(TestkitError::Stopped))
    }

    /// The port it listens on, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Whether the process is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    /// Every connection drops; with no persistence, all data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (stopping it first if it
    /// runs) and waits until it answers PING. It comes back empty.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop();
        // The port was just freed; retry briefly should the bind race.
        let deadline = Instant::now() + STARTUP_PATIENCE;
        loop {
            match self.spawn() {
                Err(TestkitError::Exited(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// Runs one command (`["PUBSUB", "NUMSUB", "ch"]`) on a fresh
    /// connection and converts the reply, e.g. to `i64` or `Vec<String>`.
    pub fn redis_cli<T: FromRedisValue>(&self, args: &[&str]) -> Result<T, TestkitError> {
        if self.child.is_none() {
            return Err(TestkitError::Stopped);
        }
        let (name, rest) = args.split_first().ok_or_else(|| {
            TestkitError::Redis(redis::RedisError::from((
                redis::ErrorKind::Client,
                "empty command",
            )))
        })?;
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut cmd = redis::cmd(name);
        for arg in rest {
            cmd.arg(*arg);
        }
        Ok(cmd.query(&mut conn)?)
    }

    /// Subscribers of `channel` (`PUBSUB NUMSUB`): with one pub/sub
    /// connection per gateway, the number of instances subscribed to it.
    pub fn numsub(&self, channel: &str) -> Result<u64, TestkitError> {
        let (_, n): (String, u64) = self.redis_cli(&["PUBSUB", "NUMSUB", channel])?;
        Ok(n)
    }

    /// The connected clients of one type (`"normal"`, `"pubsub"`), each as
    /// the fields `CLIENT LIST` shows (`id`, `sub`, `name`, ...): to pick
    /// one instance's connection out of several.
    pub fn clients(
        &self,
        client_type: &str,
    ) -> Result<Vec<BTreeMap<String, String>>, TestkitError> {
        let list: String = self.redis_cli(&["CLIENT", "LIST", "TYPE", client_type])?;
        Ok(list
            .lines()
            .map(|line| {
                line.split(' ')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect())
    }

    /// Kills one client by its `CLIENT LIST` id, as a dropped connection
    /// would look to it; true if it existed.
    pub fn kill_client(&self, id: &str) -> Result<bool, TestkitError> {
        let killed: i64 = self.redis_cli(&["CLIENT", "KILL", "ID", id])?;
        Ok(killed == 1)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn spawn(&mut self) -> Result<(), TestkitError> {
        let log = self.log_path();
        let _ = std::fs::remove_file(&log);
        let mut child = Command::new(redis_binary())
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + STARTUP_PATIENCE;
        loop {
            if let Some(status) = child.try_wait()? {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                return Err(TestkitError::Exited(format!(
                    "{status}: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )));
            }
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TestkitError::NotReady(STARTUP_PATIENCE));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server binary: `DANMAKU_REDIS_SERVER` if set, else `redis-server`
/// from `PATH`.
fn redis_binary() -> String {
    std::env::var("DANMAKU_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// A port nobody listened on a moment ago: bind port 0, read it, let go.
fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Whether a Redis on `port` answers PING right now.
fn ping(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
        return false;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    redis::cmd("PING").query::<String>(&mut conn).is_ok()
}

/// A valid comment in `room` with id `id`, stamped now, with every field
/// set (a name with non-ASCII text included), so round trips check them all.
pub fn comment(room: &str, id: &str) -> Arc<Danmaku> {
    Arc::new(Danmaku {
        id: id.into(),
        room: room.into(),
        user: "guest-000001".into(),
        name: Some("名前".into()),
        text: format!("弹幕 {id}"),
        color: "#ffcc00".into(),
        mode: Mode::Top,
        ts: now_ms(),
    })
}

/// Milliseconds since the Unix epoch, as comments are stamped.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Retries `check` every 25 ms until it returns `Some`, and fails the test
/// if it has not within `patience`: tests wait for a state, never for a
/// fixed time.
pub async fn eventually<T, F, Fut>(what: &str, patience: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_restarts_empty_and_dies_on_drop() {
        let mut server = RedisServer::start().unwrap();
        assert_ne!(server.port(), 6379);
        let _: () = server.redis_cli(&["SET", "k", "v"]).unwrap();
        let v: String = server.redis_cli(&["GET", "k"]).unwrap();
        assert_eq!(v, "v");
        assert_eq!(server.numsub("nobody").unwrap(), 0);

        server.stop();
        assert!(!ping(server.port()));
        assert!(matches!(
            server.redis_cli::<String>(&["PING"]),
            Err(TestkitError::Stopped)
        ));

        server.restart().unwrap();
        let v: Option<String> = server.redis_cli(&["GET", "k"]).unwrap();
        assert_eq!(v, None, "no persistence across restarts");

        let port = server.port();
        drop(server);
        assert!(!ping(port));
    }

    #[test]
    fn lists_and_kills_clients() {
        let server = RedisServer::start().unwrap();
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        let _: () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("victim")
            .query(&mut conn)
            .unwrap();
        let clients = server.clients("normal").unwrap();
        let victim = clients
            .iter()
            .find(|c| c.get("name").map(String::as_str) == Some("victim"))
            .expect("the named client is listed");
        assert!(server.kill_client(&victim["id"]).unwrap());
        assert!(!server.kill_client(&victim["id"]).unwrap_or(false));
        assert!(redis::cmd("PING").query::<String>(&mut conn).is_err());
    }

    #[test]
    fn a_comment_fixture_is_complete_and_fresh() {
        let c = comment("room", "c1");
        assert_eq!((c.room.as_str(), c.id.as_str()), ("room", "c1"));
        assert!(c.name.is_some());
        assert!(now_ms() - c.ts < 60_000);
    }

    #[test]
    fn extra_arguments_apply() {
        let server = RedisServer::start_with(&["--maxmemory", "12345678"]).unwrap();
        let (_, v): (String, String) = server.redis_cli(&["CONFIG", "GET", "maxmemory"]).unwrap();
        assert_eq!(v, "12345678");
    }
}
