//! A tiny HTTP/1.1 receiver on loopback for the forwarder tests: it records every request and
//! answers with a scripted status (then 200), or 503 while it is told to be down.

#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use deploykit_logs::{Record, Source, Stream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One request the receiver got, and the status it answered.
#[derive(Debug, Clone)]
pub struct Received {
    /// `POST /v1/logs HTTP/1.1`.
    pub request_line: String,
    /// Header names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// The receiver's shared state.
#[derive(Debug, Default)]
pub struct Receiver {
    pub received: Mutex<Vec<Received>>,
    /// Statuses to answer, in order, before answering 200.
    pub script: Mutex<VecDeque<u16>>,
    /// While set, every request is answered 503.
    pub down: AtomicBool,
}

impl Receiver {
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The requests answered 200.
    pub fn accepted(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn script(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses);
    }
}

/// Binds a receiver on a free loopback port.
pub async fn start() -> (SocketAddr, Arc<Receiver>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let receiver = Arc::new(Receiver::default());
    tokio::spawn(serve(listener, receiver.clone()));
    (address, receiver)
}

/// Binds a receiver on `address` (a port chosen earlier).
pub async fn start_on(address: SocketAddr) -> Arc<Receiver> {
    let listener = TcpListener::bind(address).await.unwrap();
    let receiver = Arc::new(Receiver::default());
    tokio::spawn(serve(listener, receiver.clone()));
    receiver
}

/// A loopback address nothing listens on (yet).
pub async fn free_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

async fn serve(listener: TcpListener, receiver: Arc<Receiver>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let receiver = receiver.clone();
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
                let status = if receiver.down.load(Ordering::SeqCst) {
                    503
                } else {
                    receiver.script.lock().unwrap().pop_front().unwrap_or(200)
                };
                receiver.received.lock().unwrap().push(Received {
                    request_line: request_line.trim_end().to_owned(),
                    headers,
                    body,
                    status,
                });
                let reason = match status {
                    200 => "OK",
                    400 => "Bad Request",
                    500 => "Internal Server Error",
                    503 => "Service Unavailable",
                    _ => "Other",
                };
                let answer_body = if status == 200 { "" } else { "try again" };
                let response = format!(
                    "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\n\r\n{answer_body}",
                    answer_body.len()
                );
                if write.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// `count` records of one instance, numbered from `first` in their `n` field and line.
pub fn numbered(first: u64, count: u64) -> Vec<Record> {
    let source = Source::new("api", "production", "r42", "api-1");
    (first..first + count)
        .map(|n| {
            let mut record = Record::new(
                source.clone(),
                Stream::Stdout,
                1_700_000_000_000_000_000 + n as i64,
                format!("line {n}"),
            );
            record.fields_mut().insert("n", n.into());
            record
        })
        .collect()
}

/// The `n` fields of the records of webhook bodies (JSON arrays of records), in order.
pub fn numbers_in(requests: &[Received]) -> Vec<u64> {
    let mut out = Vec::new();
    for request in requests {
        let serde_json::Value::Array(records) = request.json() else {
            panic!("a webhook body is a JSON array");
        };
        for record in records {
            out.push(record["fields"]["n"].as_u64().expect("an n field"));
        }
    }
    out
}
