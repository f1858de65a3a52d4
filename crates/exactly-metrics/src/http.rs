//! A minimal HTTP/1.1 endpoint for `/metrics`, `/health` and `/ready` on tokio.
//!
//! Hand-written rather than built on an HTTP framework: it serves three fixed paths to
//! scrapers and probes, one request per connection (`Connection: close`), so parsing the
//! request line is all it needs.

use crate::error::MetricsError;
use crate::health::Health;
use crate::metrics::Metrics;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Content type of the Prometheus text exposition format served at `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request head accepted; scrapers and probes send a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long shutdown waits for responses in flight before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Binds a listener for [`serve_listener`]. Bind port 0 to get a free port; the returned
/// address says which.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(MetricsError::LocalAddr)?;
    Ok((listener, local))
}

/// Serves `/metrics`, `/health` and `/ready` on `addr` until `shutdown` completes.
/// See [`serve_listener`].
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MetricsError> {
    let (listener, _) = bind(addr).await?;
    serve_listener(listener, metrics, health, shutdown).await
}

/// Serves `/metrics`, `/health` and `/ready` on an already bound listener until `shutdown`
/// completes:
///
/// - `GET /metrics`: 200, every series of `metrics` in the text format 0.0.4;
/// - `GET /health`: 200 `ok` while [`Health::is_live`], else 503;
/// - `GET /ready`: 200 `ready` while [`Health::is_ready`], else 503;
/// - any other path 404, any other method than GET or HEAD 405.
///
/// Each connection runs in its own task with read and write timeouts. On shutdown it stops
/// accepting, then gives responses in flight a few seconds to finish.
pub async fn serve_listener(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MetricsError> {
    let local = listener.local_addr().map_err(MetricsError::LocalAddr)?;
    tracing::info!(%local, "serving /metrics, /health and /ready");
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow with every scrape.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (metrics, health) = (Arc::clone(&metrics), Arc::clone(&health));
                    connections.spawn(async move {
                        if let Err(e) = handle_connection(stream, &metrics, &health).await {
                            tracing::debug!(%peer, error = %e, "metrics connection failed");
                        }
                    });
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning, and
                    // keep serving once the condition clears.
                    tracing::warn!(%local, error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "metrics connections still open at shutdown; dropped"
        );
    }
    tracing::info!(%local, "metrics endpoint stopped");
    Ok(())
}

/// One response, ready to be written.
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: false,
        }
    }

    fn write_to(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

async fn handle_connection(
    mut stream: TcpStream,
    metrics: &Metrics,
    health: &Health,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request head not received in time",
            ))
        }
    };
    let (response, head_only) = match parse_request_line(&head) {
        Some((method, path)) => (route(method, path, metrics, health), method == "HEAD"),
        None => (Response::text(400, "Bad Request", "bad request\n"), false),
    };
    let bytes = response.write_to(head_only);
    match tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "response not read in time",
        )),
    }
}

/// Reads until the end of the request head (an empty line), the peer's EOF, or
/// [`MAX_REQUEST_HEAD`] bytes. Headers are not interpreted, and a body is never read.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while head.len() < MAX_REQUEST_HEAD {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    Ok(head)
}

/// `(method, path)` of a request line like `GET /metrics?x=1 HTTP/1.1`, query string removed.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..end])
        .ok()?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Some((method, path))
}

fn route(method: &str, path: &str, metrics: &Metrics, health: &Health) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response {
            allow: true,
            ..Response::text(405, "Method Not Allowed", "method not allowed\n")
        };
    }
    match path {
        "/metrics" => Response {
            content_type: METRICS_CONTENT_TYPE,
            ..Response::text(200, "OK", metrics.encode_text())
        },
        "/health" if health.is_live() => Response::text(200, "OK", "ok\n"),
        "/health" => Response::text(503, "Service Unavailable", "not live\n"),
        "/ready" if health.is_ready() => Response::text(200, "OK", "ready\n"),
        "/ready" => Response::text(503, "Service Unavailable", "not ready\n"),
        _ => Response::text(
            404,
            "Not Found",
            "not found: try /metrics, /health or /ready\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_request_line;

    #[test]
    fn request_line_gives_method_and_path_without_query() {
        let head = b"GET /metrics?name[]=x HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(parse_request_line(head), Some(("GET", "/metrics")));
    }

    #[test]
    fn malformed_request_lines_are_rejected() {
        assert_eq!(parse_request_line(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"GET metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"GET /metrics SPDY/3\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"no newline at all"), None);
    }
}
