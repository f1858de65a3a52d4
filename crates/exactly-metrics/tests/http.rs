//! The HTTP endpoint, spoken to with a plain TCP stream as a scraper or probe would.

use exactly_metrics::{Health, Metrics};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), exactly_metrics::MetricsError>>,
}

async fn start() -> Server {
    let metrics = Arc::new(Metrics::new("a", "i").expect("metrics"));
    let health = Arc::new(Health::new());
    let (listener, addr) = exactly_metrics::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(exactly_metrics::serve_listener(
        listener,
        Arc::clone(&metrics),
        Arc::clone(&health),
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        metrics,
        health,
        stop,
        task,
    }
}

/// Sends `request` raw and returns (status code, head, body).
async fn raw(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("response within 5 s")
        .expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code in the status line");
    (status, head.to_owned(), body.to_owned())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n"),
    )
    .await
}

#[tokio::test]
async fn metrics_shows_the_exact_counter_line() {
    let server = start().await;
    server
        .metrics
        .duplicates_dropped_total
        .with_label_values(&["t"])
        .inc_by(3);

    let (status, head, body) = get(server.addr, "/metrics").await;

    assert_eq!(status, 200);
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    assert!(head.contains("Connection: close"), "{head}");
    assert!(
        body.lines()
            .any(|l| l == r#"exactly_duplicates_dropped_total{app="a",instance="i",topic="t"} 3"#),
        "{body}"
    );
}

#[tokio::test]
async fn ready_is_503_until_set_ready() {
    let server = start().await;

    let (before, _, _) = get(server.addr, "/ready").await;
    server.health.set_ready(true);
    let (after, _, body) = get(server.addr, "/ready").await;

    assert_eq!(before, 503);
    assert_eq!(after, 200);
    assert_eq!(body, "ready\n");
}

#[tokio::test]
async fn health_is_200_while_live() {
    let server = start().await;

    let (live, _, body) = get(server.addr, "/health").await;
    server.health.set_live(false);
    let (dead, _, _) = get(server.addr, "/health").await;

    assert_eq!((live, body.as_str()), (200, "ok\n"));
    assert_eq!(dead, 503);
}

#[tokio::test]
async fn unknown_path_is_404() {
    let server = start().await;
    assert_eq!(get(server.addr, "/nope").await.0, 404);
}

#[tokio::test]
async fn other_methods_are_405_and_garbage_is_400() {
    let server = start().await;
    let (status, head, _) = raw(
        server.addr,
        "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    assert_eq!(raw(server.addr, "hello\r\n\r\n").await.0, 400);
}

#[tokio::test]
async fn head_request_has_headers_but_no_body() {
    let server = start().await;
    let (status, head, body) = raw(server.addr, "HEAD /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 200);
    assert!(head.contains("Content-Length: 3"), "{head}");
    assert_eq!(body, "");
}

#[tokio::test]
async fn shutdown_stops_the_server_and_frees_the_port() {
    let server = start().await;
    // A client that connects and never sends must not hold up shutdown past the grace period.
    let _idle = TcpStream::connect(server.addr).await.expect("connect");

    server.stop.send(()).expect("server still running");
    let result = tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("server stops within 10 s")
        .expect("server task did not panic");

    assert!(result.is_ok());
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "port still accepts"
    );
}

#[tokio::test]
async fn binding_a_used_port_names_the_address_and_the_setting() {
    let (_held, addr) = exactly_metrics::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind");
    let err = exactly_metrics::bind(addr)
        .await
        .expect_err("port is taken");
    let msg = err.to_string();
    assert!(msg.contains(&addr.to_string()), "{msg}");
    assert!(msg.contains("metrics.addr"), "{msg}");
}
