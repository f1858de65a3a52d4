//! Helpers for tests against the real PostgreSQL and Redis (no mocks): finding the services,
//! unique names per test, and a TCP proxy a test can cut to drop a sink's connections.
//!
//! Like the broker tests (`exactly_testkit::broker::require_broker`): outside CI a missing
//! service skips the test with a printed reason; under `CI=true` it fails the test.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `TEST_POSTGRES` (a tokio-postgres connection string), or the local test database
/// `host=127.0.0.1 port=5432 user=postgres dbname=test`.
pub fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_owned())
}

/// `TEST_REDIS`, or `redis://127.0.0.1:6379/`.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Where a probe that finds no service skips (outside CI) and who counts the skips.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    /// Panic instead of skipping (`CI=true`).
    pub ci: bool,
    /// The file a skip is appended to (`scripts/test.sh` counts its lines: the test runner
    /// reports a skipped test as passed).
    pub skip_log: Option<std::path::PathBuf>,
}

impl Probe {
    /// From the environment: `CI` and `TEST_SKIP_LOG` (outside the `EXACTLY_*` namespace,
    /// which is the apps' configuration).
    pub fn from_env() -> Self {
        Probe {
            ci: in_ci(),
            skip_log: std::env::var_os("TEST_SKIP_LOG").map(Into::into),
        }
    }

    fn missing(&self, test: &str, what: &str, target: &str, why: &str, how: &str) {
        if self.ci {
            panic!("{test}: no {what} at {target} ({why}) and CI=true: this test must not be skipped; {how}");
        }
        eprintln!("SKIPPED {test}: no {what} at {target} ({why}; {how})");
        if let Some(path) = &self.skip_log {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{test}: no {what}");
            }
        }
    }
}

/// The PostgreSQL connection string if the server answers a query. Otherwise: under
/// `CI=true` panics with how to fix it; elsewhere prints why the test is skipped and returns
/// `None`.
pub fn require_postgres(test: &str) -> Option<String> {
    require_postgres_at(test, &postgres_url(), &Probe::from_env())
}

/// [`require_postgres`] for the server at `url`, failing or skipping as `probe` says.
pub fn require_postgres_at(test: &str, url: &str, probe: &Probe) -> Option<String> {
    let url = url.to_owned();
    let answer = (|| -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
            config.connect_timeout(Duration::from_secs(5));
            let (client, conn) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let conn = tokio::spawn(conn);
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| e.to_string())?;
            drop(client);
            let _ = conn.await;
            Ok(())
        })
    })();
    match answer {
        Ok(()) => Some(url),
        Err(why) => {
            probe.missing(
                test,
                "PostgreSQL",
                &url,
                &why,
                "start PostgreSQL or point TEST_POSTGRES at one",
            );
            None
        }
    }
}

/// The Redis URL if the server answers `PING`; otherwise as [`require_postgres`].
pub fn require_redis(test: &str) -> Option<String> {
    require_redis_at(test, &redis_url(), &Probe::from_env())
}

/// [`require_redis`] for the server at `url`, failing or skipping as `probe` says.
pub fn require_redis_at(test: &str, url: &str, probe: &Probe) -> Option<String> {
    let url = url.to_owned();
    let answer = (|| -> Result<(), String> {
        let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
        let mut c = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query::<String>(&mut c)
            .map_err(|e| e.to_string())?;
        Ok(())
    })();
    match answer {
        Ok(()) => Some(url),
        Err(why) => {
            probe.missing(
                test,
                "Redis",
                &url,
                &why,
                "start redis-server or point TEST_REDIS at one",
            );
            None
        }
    }
}

/// A name unique to this process and call (lowercase, `[a-z0-9_]`): a table name or key
/// prefix of one test, so tests can run in parallel.
pub fn unique_name(prefix: &str) -> String {
    crate::unique(prefix, '_').to_ascii_lowercase()
}

/// A TCP proxy on 127.0.0.1 in front of a server, that a test can [`cut`](Self::cut) (every
/// open connection is shut down, new ones are closed at once) and [`restore`](Self::restore).
/// Point a sink at [`addr`](Self::addr) to drop its connections at a moment of the test's
/// choosing. With [`linger`](Self::linger), a connection the server closed stays open on the
/// client's side for a while, as a terminated PostgreSQL backend's does while it exits.
pub struct TcpProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    linger_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicU32>,
}

impl TcpProxy {
    /// A proxy to `target` (`host:port`).
    pub fn start(target: &str) -> std::io::Result<Self> {
        let target: SocketAddr = target
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{target} resolves to nothing")))?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accepted = Arc::new(AtomicU32::new(0));
        let linger_ms = Arc::new(AtomicU64::new(0));
        let (u, s, o, a) = (up.clone(), stop.clone(), open.clone(), accepted.clone());
        let l = linger_ms.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if !u.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let mut guard = o.lock().unwrap_or_else(|p| p.into_inner());
                for s in [&client, &server] {
                    if let Ok(c) = s.try_clone() {
                        guard.push(c);
                    }
                }
                drop(guard);
                pump(&client, &server, &l);
                pump(&server, &client, &l);
            }
        });
        Ok(Self {
            addr,
            up,
            linger_ms,
            stop,
            open,
            accepted,
        })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, a connection that ends (the server closed it, or a write to it failed) is
    /// shut down on both sides only `delay` later; until then the client sees it open and
    /// what it sends goes nowhere. [`cut`](Self::cut) still shuts connections down at once.
    pub fn linger(&self, delay: Duration) {
        self.linger_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Connections accepted and forwarded so far.
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Shuts down every open connection; new ones are closed at once until
    /// [`restore`](Self::restore).
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for s in open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Copies `from` to `to` on a thread until either side closes, then waits the proxy's
/// linger time before shutting both down.
fn pump(from: &TcpStream, to: &TcpStream, linger_ms: &Arc<AtomicU64>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let linger_ms = linger_ms.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(linger_ms.load(Ordering::SeqCst)));
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
