//! The `otel` feature really exports: spans arrive at an OTLP/HTTP endpoint as protobuf.
//!
//! The collector is a tiny HTTP server on loopback that records each request and answers
//! `200 OK`.
#![cfg(feature = "otel")]

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request the fake collector received.
#[derive(Debug)]
struct Request {
    /// `POST /v1/traces HTTP/1.1`.
    request_line: String,
    /// Header names lower-cased, values trimmed.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Serves HTTP/1.1 on `listener` (keep-alive included), sending every request to `tx`.
async fn serve(listener: TcpListener, tx: mpsc::UnboundedSender<Request>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            loop {
                let mut request_line = String::new();
                if read.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    let (name, value) = line.split_once(':').expect("a header line");
                    headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                }
                let length = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .map_or(0, |(_, v)| v.parse::<usize>().expect("a content length"));
                let mut body = vec![0; length];
                if read.read_exact(&mut body).await.is_err() {
                    return;
                }
                let _ = tx.send(Request {
                    request_line: request_line.trim_end().to_owned(),
                    headers,
                    body,
                });
                let response = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                if write.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn deployment_spans_are_exported_as_otlp_protobuf() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(serve(listener, tx));

    let endpoint = format!("http://127.0.0.1:{port}/v1/traces");
    let guard = deploykit_telemetry::otel::install(&endpoint, "otel-test").unwrap();
    {
        let span = tracing::info_span!(
            "deployment",
            id = "d-1",
            service = "web",
            environment = "staging",
            revision = "abc123"
        );
        let _entered = span.enter();
        tracing::info!("rolling out");
    }
    // The batch is sent on shutdown; flushing blocks this thread, so keep it off the runtime.
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .unwrap()
        .unwrap();

    let request = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the collector got a request within 10 s")
        .expect("the server is running");
    assert_eq!(request.request_line, "POST /v1/traces HTTP/1.1");
    assert_eq!(
        request.header("content-type"),
        Some("application/x-protobuf")
    );
    for needle in ["deployment", "d-1", "web", "otel-test"] {
        assert!(
            contains(&request.body, needle.as_bytes()),
            "the exported body lacks {needle:?}: {:?}",
            String::from_utf8_lossy(&request.body)
        );
    }
    server.abort();
}
