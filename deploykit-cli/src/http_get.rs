//! The plain HTTP/1.1 GETs of failover probes and checks: a 2xx status line or why not.

/// A plain HTTP/1.1 GET of `url` (`http://host[:port]/path`): `Ok` on a 2xx status line.
pub(crate) async fn get_url(url: &str) -> std::result::Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or("not an http:// URL")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let address = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    get(&address, authority, &path, url).await
}

/// A plain HTTP/1.1 GET of `path` from `address` with `Host: host`: `Ok` on a 2xx status line.
pub(crate) async fn get_at(
    address: std::net::SocketAddr,
    host: &str,
    path: &str,
) -> std::result::Result<(), String> {
    get(
        &address.to_string(),
        host,
        path,
        &format!("http://{address}{path} (host {host})"),
    )
    .await
}

async fn get(address: &str, host: &str, path: &str, url: &str) -> std::result::Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: deploykit-failover\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let mut head = [0u8; 64];
    let n = stream
        .read(&mut head)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('2') && status.len() == 3 {
        Ok(())
    } else if n == 0 {
        Err(format!(
            "GET {url}: the connection closed without an answer"
        ))
    } else {
        Err(format!("GET {url} answered {status}"))
    }
}
