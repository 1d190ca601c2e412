//! The HTTP/1.1 GETs of failover probes and checks: a 2xx status line or why not (plain, or
//! over TLS to a proxy that serves it).

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

/// A GET of `path` from `address` with `Host: host`: `Ok` on a 2xx status. Plain HTTP/1.1,
/// or HTTPS when `trust` gives the certificate (PEM) the proxy there is trusted by (its name
/// checked is `host`).
pub(crate) async fn get_at(
    address: std::net::SocketAddr,
    host: &str,
    path: &str,
    trust: Option<&str>,
) -> std::result::Result<(), String> {
    let Some(trust) = trust else {
        return get(
            &address.to_string(),
            host,
            path,
            &format!("http://{address}{path} (host {host})"),
        )
        .await;
    };
    let url = format!("https://{host}:{}{path}", address.port());
    let said = |e: &dyn std::fmt::Display| format!("GET {url} (at {address}): {e}");
    let certificate = reqwest::Certificate::from_pem(trust.as_bytes()).map_err(|e| said(&e))?;
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(certificate)
        .resolve(host, address)
        .user_agent("deploykit-failover")
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| said(&e))?;
    let response = client.get(&url).send().await.map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        said(&text)
    })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "GET {url} (at {address}) answered {}",
            response.status()
        ))
    }
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
