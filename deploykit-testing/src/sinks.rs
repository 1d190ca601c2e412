//! Receivers on loopback for tests of what deploykit sends: [`HttpSink`] records webhook
//! requests, [`SmtpSink`] speaks enough SMTP to accept mail (or refuse it) and records it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One request an [`HttpSink`] received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkRequest {
    /// The request target, e.g. `/hooks/chat`.
    pub path: String,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl SinkRequest {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 server on loopback answering every request with 200, recording each.
#[derive(Clone, Debug)]
pub struct HttpSink {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<SinkRequest>>>,
}

impl HttpSink {
    /// Starts one on a free port (in the current tokio runtime).
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut reader = BufReader::new(socket);
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.push((k.trim().to_lowercase(), v.trim().to_string()));
                        }
                    }
                    let length = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    seen.lock().expect("sink").push(SinkRequest {
                        path,
                        headers,
                        body,
                    });
                    let _ = reader
                        .get_mut()
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        Ok(HttpSink { addr, requests })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<SinkRequest> {
        self.requests.lock().expect("sink").clone()
    }
}

/// One mail an [`SmtpSink`] accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mail {
    /// The envelope sender (`MAIL FROM`).
    pub from: String,
    /// The envelope recipients (`RCPT TO`).
    pub to: Vec<String>,
    /// The message as sent (headers and body, dot-stuffing removed).
    pub data: String,
}

/// An SMTP server on loopback that accepts every mail (or answers every `RCPT TO` with a
/// given code) and records what it accepted.
#[derive(Clone, Debug)]
pub struct SmtpSink {
    addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpSink {
    /// Starts one accepting mail on a free port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_refusing(None).await
    }

    /// Starts one answering `RCPT TO` with `code` (e.g. 450 to defer, 550 to refuse), or
    /// accepting with `None`.
    pub async fn start_refusing(code: Option<u16>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mails = Arc::new(Mutex::new(Vec::new()));
        let kept = mails.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let _ = session(socket, code, kept).await;
                });
            }
        });
        Ok(SmtpSink { addr, mails })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Every mail accepted so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().expect("sink").clone()
    }
}

async fn session(
    socket: tokio::net::TcpStream,
    refuse: Option<u16>,
    kept: Arc<Mutex<Vec<Mail>>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(socket);
    reader.get_mut().write_all(b"220 sink ESMTP\r\n").await?;
    let mut from = String::new();
    let mut to = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let arg = |line: &str| {
            line.split_once(':')
                .map(|(_, a)| {
                    a.trim()
                        .trim_start_matches('<')
                        .split('>')
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
                .unwrap_or_default()
        };
        let answer: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            "250 sink\r\n".into()
        } else if upper.starts_with("MAIL FROM") {
            from = arg(&line);
            to.clear();
            "250 OK\r\n".into()
        } else if upper.starts_with("RCPT TO") {
            match refuse {
                Some(code) => format!("{code} not now\r\n"),
                None => {
                    to.push(arg(&line));
                    "250 OK\r\n".into()
                }
            }
        } else if upper.starts_with("DATA") {
            reader.get_mut().write_all(b"354 go on\r\n").await?;
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).await? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" || l == ".\n" {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
            }
            kept.lock().expect("sink").push(Mail {
                from: from.clone(),
                to: std::mem::take(&mut to),
                data,
            });
            "250 queued\r\n".into()
        } else if upper.starts_with("QUIT") {
            reader.get_mut().write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            "250 OK\r\n".into()
        };
        reader.get_mut().write_all(answer.as_bytes()).await?;
    }
}
