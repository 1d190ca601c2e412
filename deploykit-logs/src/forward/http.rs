//! The HTTP client the OTLP and webhook forwarders share: one POST per batch over HTTP/1.1
//! (plain http, kept-alive connections), an answer's status mapped to deploykit's error kinds.

use std::time::Duration;

use bytes::Bytes;
use deploykit_core::{Error, Result};
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How much of an error answer's body an error quotes.
const QUOTED_BODY: usize = 200;

/// Posts bodies to one URL with fixed extra headers.
#[derive(Debug, Clone)]
pub(crate) struct HttpPoster {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    /// `logs.forward.otlp`, `logs.forward.webhook`: the operation errors name.
    operation: &'static str,
}

impl HttpPoster {
    /// A poster to `url` (plain `http://`; `field` names it in errors).
    pub(crate) fn new(url: &str, field: &str, operation: &'static str) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .map_err(|error| Error::invalid(field, format!("{url:?} is not a URL: {error}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(Error::invalid(
                    field,
                    format!(
                        "{url:?}: https is not supported by this forwarder (no TLS); send to a \
                         local collector or proxy over http"
                    ),
                ));
            }
            _ => {
                return Err(Error::invalid(
                    field,
                    format!("{url:?} is not an http:// URL"),
                ));
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(Error::invalid(field, format!("{url:?} has no host")));
        }
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        Ok(HttpPoster {
            client,
            uri,
            headers: Vec::new(),
            timeout: Duration::from_secs(30),
            operation,
        })
    }

    /// Adds a header sent with every request (`field` names the headers table in errors).
    pub(crate) fn add_header(&mut self, field: &str, name: &str, value: &str) -> Result<()> {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::invalid(field, format!("{name:?} is not a header name")))?;
        let mut value = HeaderValue::from_str(value).map_err(|_| {
            Error::invalid(
                format!("{field}.{name}"),
                "the value is not a valid header value (control characters?)",
            )
        })?;
        value.set_sensitive(true);
        self.headers.push((header, value));
        Ok(())
    }

    /// Sets how long one request may take, answer included.
    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The URL posted to.
    pub(crate) fn url(&self) -> String {
        self.uri.to_string()
    }

    /// Posts `body`. A connection failure, a timeout, 408, 429 and 5xx are
    /// [`Error::Transient`]; any other non-2xx answer is an [`Error::Backend`] (not
    /// retryable). Both name the status and the URL.
    pub(crate) async fn post(
        &self,
        content_type: &'static str,
        body: Vec<u8>,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<()> {
        let what = format!("{}: POST {}", self.operation, self.uri);
        let mut request = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| Error::backend(&what, error.to_string()))?;
        for (name, value) in self.headers.iter().chain(extra) {
            request.headers_mut().append(name.clone(), value.clone());
        }
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| Error::transient(&what, connect_message(&error)))?;
            let status = response.status();
            // Read the whole answer so that the connection can be reused.
            let answer = response
                .into_body()
                .collect()
                .await
                .map_err(|error| {
                    Error::transient(&what, format!("reading the answer failed: {error}"))
                })?
                .to_bytes();
            Ok::<_, Error>((status, answer))
        };
        let (status, answer) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                Error::transient(&what, format!("no answer within {:?}", self.timeout))
            })??;
        if status.is_success() {
            return Ok(());
        }
        let quoted = String::from_utf8_lossy(&answer[..answer.len().min(QUOTED_BODY)])
            .trim()
            .to_string();
        let message = if quoted.is_empty() {
            format!("the server answered {status}")
        } else {
            format!("the server answered {status}: {quoted}")
        };
        if is_retryable_status(status) {
            Err(Error::transient(what, message))
        } else {
            Err(Error::backend(
                what,
                format!("{message} (not retryable: the request itself was refused)"),
            ))
        }
    }
}

/// 408, 429 and 5xx: the server may take the same request later.
fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// The error and its causes (hyper's top-level message alone says only "client error").
fn connect_message(error: &hyper_util::client::legacy::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
