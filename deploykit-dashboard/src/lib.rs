//! deploykit's web dashboard: watch and drive deployments in a browser.
//!
//! Pages are HTML rendered on the server, with one small script and one stylesheet served by
//! the dashboard itself (no build toolchain, no CDN: it works without internet):
//!
//! - **Services** (`/`): every environment's services with their revisions, instances (ready,
//!   restarts, why one fails) and the traffic split they really receive; deployments in flight.
//! - **A deployment** (`/deployments/{id}`): its canary steps, each analysis metric's
//!   measurements charted against its thresholds, judgements (Mann-Whitney tables), the
//!   rollback reason and verified outcome, the whole timeline, and buttons to approve or
//!   promote, reject, pause, resume and abort.
//! - **A service** (`/services/{env}/{service}`): its history and a rollback to an earlier
//!   revision.
//! - **Previews**, **Backups** (the backup agent's duties, last runs, the last drill's RTO and
//!   RPO) and the **Audit log** with whether its hash chain verifies.
//!
//! Pages update themselves: the script listens to `/events` (server-sent events, one per
//! journal entry of any deployment in the store, whichever process wrote it: see
//! [`JournalFollower`]) and replaces the page's content with a fresh rendering, without a
//! reload.
//!
//! Every button goes through the [`Orchestrator`] you give, so its access policy, four-eyes
//! rule and audit log apply as they do on the command line, under the signed-in actor.
//! Signing in is by a link ([`login_link`]) signed with the dashboard's [`SessionKey`]; see
//! [`session`].
//!
//! ```no_run
//! # async fn f(orchestrator: deploykit_core::Orchestrator, store: std::sync::Arc<dyn deploykit_core::StateStore>, env: std::sync::Arc<dyn deploykit_core::Environment>) -> deploykit_core::Result<()> {
//! use std::sync::Arc;
//! use deploykit_core::{Actor, Clock, EnvironmentName, SystemClock};
//! use deploykit_dashboard::{Dashboard, SessionKey, login_link};
//! let key = SessionKey::load_or_create(std::path::Path::new(".deploykit/dashboard.key"))?;
//! let dashboard = Dashboard::builder(store, Arc::new(orchestrator), key.clone())
//!     .environment(EnvironmentName::new("production")?, env)
//!     .build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await.unwrap();
//! println!("{}", login_link("http://127.0.0.1:8090", &key, &Actor::new("carol"), SystemClock.now()));
//! dashboard.serve(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod chart;
mod html;
mod live;
mod pages;
pub mod session;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use deploykit_core::event::JournalFollower;
use deploykit_core::{
    Actor, Clock, DeploymentId, Environment, EnvironmentName, Error, Orchestrator, Result,
    ServiceId, StateStore, SystemClock,
};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

use session::Purpose;
pub use session::SessionKey;

/// The cookie holding a signed-in browser's session.
pub const SESSION_COOKIE: &str = "deploykit_session";
/// The request header with which the page's script asks for the content alone.
const FRAGMENT_HEADER: &str = "x-deploykit-fragment";
/// The largest form body accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

type Body = BoxBody<Bytes, Infallible>;

/// The link that signs `actor` in to the dashboard at `base_url` (valid for
/// [`session::LOGIN_LINK_VALIDITY`] from `now`).
pub fn login_link(
    base_url: &str,
    key: &SessionKey,
    actor: &Actor,
    now: deploykit_core::Timestamp,
) -> String {
    format!(
        "{}/login?token={}",
        base_url.trim_end_matches('/'),
        key.login_token(actor, now)
    )
}

/// The dashboard: what it shows and acts through. Build with [`Dashboard::builder`], run with
/// [`Dashboard::serve`].
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("environments", &self.inner.environments)
            .field("services", &self.inner.services)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) orchestrator: Arc<Orchestrator>,
    pub(crate) observers: BTreeMap<EnvironmentName, Arc<dyn Environment>>,
    pub(crate) environments: Vec<EnvironmentName>,
    pub(crate) services: Vec<ServiceId>,
    pub(crate) key: SessionKey,
    pub(crate) backups: Option<PathBuf>,
    pub(crate) clock: Arc<dyn Clock>,
}

/// Who is looking, and the token their forms carry.
pub(crate) struct Viewer {
    pub(crate) actor: Actor,
    pub(crate) form_token: String,
}

/// Builds a [`Dashboard`].
#[derive(Debug)]
pub struct DashboardBuilder {
    store: Arc<dyn StateStore>,
    orchestrator: Arc<Orchestrator>,
    key: SessionKey,
    observers: BTreeMap<EnvironmentName, Arc<dyn Environment>>,
    services: Vec<ServiceId>,
    backups: Option<PathBuf>,
    clock: Arc<dyn Clock>,
}

impl Dashboard {
    /// A dashboard over `store` (the journal, the audit log), acting through `orchestrator`
    /// (which should run on the same store), signing sessions with `key`.
    pub fn builder(
        store: Arc<dyn StateStore>,
        orchestrator: Arc<Orchestrator>,
        key: SessionKey,
    ) -> DashboardBuilder {
        DashboardBuilder {
            store,
            orchestrator,
            key,
            observers: BTreeMap::new(),
            services: Vec::new(),
            backups: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// Serve on `listener` until `shutdown` completes (then every connection, live streams
    /// included, is closed).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let (stop_tx, stop) = watch::channel(false);
        let (events, _) = broadcast::channel(1024);
        let follower = JournalFollower::from_now(self.inner.store.clone()).await?;
        let feeder = tokio::spawn(live::feed(follower, events.clone(), stop.clone()));
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let inner = self.inner.clone();
            let events = events.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let stop_streams = stop.clone();
                let service = service_fn(move |req| {
                    let inner = inner.clone();
                    let events = events.clone();
                    let stop = stop_streams.clone();
                    async move { Ok::<_, Infallible>(handle(&inner, &events, stop, req).await) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    served = conn => {
                        if let Err(e) = served {
                            tracing::debug!(error = %e, "dashboard: connection ended with an error");
                        }
                    }
                    _ = stop.wait_for(|stopped| *stopped) => {}
                }
            });
        }
        let _ = stop_tx.send(true);
        let _ = feeder.await;
        Ok(())
    }
}

impl DashboardBuilder {
    /// Show `environment`'s services with what `env` observes of them (instances, traffic).
    pub fn environment(mut self, environment: EnvironmentName, env: Arc<dyn Environment>) -> Self {
        self.observers.insert(environment, env);
        self
    }

    /// Show these services even before their first deployment (the configured ones); services
    /// with a history in the store are always shown.
    pub fn services(mut self, services: impl IntoIterator<Item = ServiceId>) -> Self {
        self.services.extend(services);
        self
    }

    /// Show the backup agent's state from this file (`deploykit backup agent`'s
    /// `backup-agent.json`).
    pub fn backup_state(mut self, path: impl Into<PathBuf>) -> Self {
        self.backups = Some(path.into());
        self
    }

    /// Read time from `clock` (session expiry, the backup agent's liveness).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The dashboard.
    pub fn build(self) -> Dashboard {
        Dashboard {
            inner: Arc::new(Inner {
                store: self.store,
                orchestrator: self.orchestrator,
                environments: self.observers.keys().cloned().collect(),
                observers: self.observers,
                services: self.services,
                key: self.key,
                backups: self.backups,
                clock: self.clock,
            }),
        }
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

/// A response with the headers every page carries: no caching, no framing, a content security
/// policy that allows only the dashboard's own script and style, referrers only to itself.
fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    let set = |h: &mut http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, header::HeaderValue::from_static(v));
    };
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    set(h, header::CACHE_CONTROL, "no-store");
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    );
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // Not `no-referrer`: with it a browser sends `Origin: null` on the page's own forms. The
    // login link's token never reaches a referrer: its page only redirects.
    set(h, header::REFERRER_POLICY, "same-origin");
    r
}

fn redirect(to: &str, cookie: Option<String>) -> Response<Body> {
    let mut r = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(v) = header::HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(cookie) = cookie.and_then(|c| header::HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    r
}

fn html_page(status: StatusCode, body: String) -> Response<Body> {
    respond(status, "text/html; charset=utf-8", body)
}

/// The status for an error: 404 for what does not exist, 403 for a refusal, 409 for an action
/// the deployment's phase does not allow, 400 for bad input, 503 for a backend that failed.
fn error_status(e: &Error) -> StatusCode {
    match e {
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::PermissionDenied { .. } => StatusCode::FORBIDDEN,
        Error::InvalidTransition { .. } | Error::Conflict { .. } | Error::LeaseHeld { .. } => {
            StatusCode::CONFLICT
        }
        Error::InvalidSpec { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri()
        .query()
        .and_then(|q| form_value(&parse_form(q.as_bytes()), name))
}

/// `s` with `%XX` escapes decoded (and `+` as a space in forms); a malformed escape stays as
/// written.
fn percent_decode(s: &[u8], plus_is_space: bool) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A path's segments, decoded.
fn segments(path: &str) -> Vec<String> {
    path.trim_matches('/')
        .split('/')
        .map(|s| percent_decode(s.as_bytes(), false))
        .collect()
}

/// `application/x-www-form-urlencoded` pairs (also a URL's query).
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    body.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut kv = pair.splitn(2, |b| *b == b'=');
            let k = percent_decode(kv.next().unwrap_or_default(), true);
            let v = percent_decode(kv.next().unwrap_or_default(), true);
            (k, v)
        })
        .collect()
}

fn form_value(form: &[(String, String)], name: &str) -> Option<String> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn session_cookie(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Whether a state-changing request comes from the dashboard's own pages: a browser says
/// where a request comes from in `Origin` (and `Sec-Fetch-Site`); both must name this host
/// when present.
fn same_origin(req: &Request<Incoming>) -> bool {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_ok = match req.headers().get(header::ORIGIN).map(|o| o.to_str()) {
        None => true,
        Some(Ok(origin)) => host.is_some_and(|h| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(h)
        }),
        Some(Err(_)) => false,
    };
    let site_ok = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| matches!(v, "same-origin" | "none"));
    origin_ok && site_ok
}

fn login_page(why: &str) -> Response<Body> {
    html_page(
        StatusCode::UNAUTHORIZED,
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in · \
             deploykit</title><link rel=\"stylesheet\" href=\"/assets/dashboard.css\"></head>\
             <body><main class=\"signin\"><h1>deploykit</h1><p id=\"signin\">{}</p><p>Sign in \
             with the link <code>deploykit dashboard</code> prints (add <code>--actor NAME</code> \
             to act as someone else, as on every command).</p></main></body></html>",
            html::esc(why)
        ),
    )
}

async fn handle(
    inner: &Arc<Inner>,
    events: &broadcast::Sender<Bytes>,
    stop: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/assets/dashboard.css") => {
            return respond(StatusCode::OK, "text/css; charset=utf-8", CSS);
        }
        (&Method::GET, "/assets/dashboard.js") => {
            return respond(StatusCode::OK, "text/javascript; charset=utf-8", JS);
        }
        (&Method::GET, "/healthz") => return respond(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/login") => {
            let now = inner.clock.now();
            return match query_param(&req, "token")
                .ok_or_else(|| Error::invalid("token", "is missing"))
                .and_then(|t| inner.key.verify(&t, Purpose::Login, now))
            {
                Ok(actor) => {
                    let session = inner.key.session_token(&actor, now);
                    tracing::info!(%actor, "dashboard: signed in");
                    redirect(
                        "/",
                        Some(format!(
                            "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; \
                             Max-Age={}",
                            session::SESSION_VALIDITY.as_secs()
                        )),
                    )
                }
                Err(e) => login_page(&format!("This login link cannot be used: {e}")),
            };
        }
        (&Method::GET, "/logout") => {
            return redirect(
                "/",
                Some(format!(
                    "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
                )),
            );
        }
        _ => {}
    }
    let Some(session) = session_cookie(&req) else {
        return login_page("You are not signed in.");
    };
    let actor = match inner
        .key
        .verify(&session, Purpose::Session, inner.clock.now())
    {
        Ok(actor) => actor,
        Err(e) => return login_page(&format!("Your session cannot be used: {e}")),
    };
    let viewer = Viewer {
        actor,
        form_token: inner.key.form_token(&session),
    };
    if method == Method::POST {
        return post(inner, &viewer, &session, req).await;
    }
    if method != Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET or POST\n",
        );
    }
    if path == "/events" {
        return live::stream(events.subscribe(), stop);
    }
    let fragment = req.headers().contains_key(FRAGMENT_HEADER);
    render(inner, &viewer, &path, fragment, None).await
}

/// Renders the page at `path`, with `error` in a banner above it if given.
async fn render(
    inner: &Inner,
    viewer: &Viewer,
    path: &str,
    fragment: bool,
    error: Option<(&Error, StatusCode)>,
) -> Response<Body> {
    let segments = segments(path);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (title, active, main) = match segments.as_slice() {
        [""] => ("Services", "/", pages::overview(inner).await),
        ["deployments", id] => (*id, "/", pages::deployment(inner, viewer, id).await),
        ["services", env, service] => (
            *service,
            "/",
            pages::service(inner, viewer, env, service).await,
        ),
        ["previews"] => ("Previews", "/previews", pages::previews(inner).await),
        ["backups"] => ("Backups", "/backups", pages::backups(inner)),
        ["audit"] => ("Audit log", "/audit", pages::audit(inner).await),
        _ => (
            "Not found",
            "",
            Err(Error::not_found(format!("page {path}"))),
        ),
    };
    let (status, mut main) = match main {
        Ok(main) => (StatusCode::OK, main),
        Err(e) => (
            error_status(&e),
            format!(
                "<div class=\"banner bad\" id=\"error\">{}</div>",
                html::esc(&e.chain())
            ),
        ),
    };
    let status = match error {
        Some((e, status)) => {
            main = format!(
                "<div class=\"banner bad\" id=\"error\">{}</div>{main}",
                html::esc(&e.chain())
            );
            status
        }
        None => status,
    };
    if fragment {
        return html_page(status, main);
    }
    html_page(
        status,
        html::page(title, active, viewer.actor.as_str(), &main),
    )
}

/// An operator's action from a form: checked for the session's form token and origin, carried
/// out through the orchestrator as the signed-in actor, then the deployment's page.
async fn post(
    inner: &Inner,
    viewer: &Viewer,
    session: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    if !same_origin(&req) {
        return respond(
            StatusCode::FORBIDDEN,
            "text/plain",
            "refused: the request does not come from this dashboard\n",
        );
    }
    let body = match Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                "refused: the form is too large\n",
            );
        }
    };
    let form = parse_form(&body);
    let token = form_value(&form, "form_token").unwrap_or_default();
    if !inner.key.check_form_token(session, &token) {
        return respond(
            StatusCode::FORBIDDEN,
            "text/plain",
            "refused: the form's token does not belong to your session (reload the page)\n",
        );
    }
    let reason = form_value(&form, "reason")
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "from the dashboard".to_string());
    let by = viewer.actor.clone();
    let o = &inner.orchestrator;
    let segments = segments(&path);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (done, back): (Result<Option<DeploymentId>>, String) = match segments.as_slice() {
        ["deployments", id, action] => {
            let d = DeploymentId::new(*id);
            let done = match *action {
                "approve" => o.approve(&d, by, reason).await,
                "reject" => o.reject(&d, by, reason).await,
                "pause" => o.pause(&d, by, reason).await,
                "resume" => o.resume(&d, by).await,
                "abort" => o.abort(&d, by, reason).await,
                other => Err(Error::invalid(
                    "action",
                    format!("{other:?} is not one of approve, reject, pause, resume, abort"),
                )),
            };
            (done.map(|()| None), format!("/deployments/{id}"))
        }
        ["services", env, service, "rollback"] => {
            let done = async {
                let env = EnvironmentName::new(*env)?;
                let service = ServiceId::new(*service)?;
                let to = match form_value(&form, "to").filter(|t| !t.is_empty()) {
                    Some(query) => Some(o.find_revision(&service, &env, &query).await?.id.clone()),
                    None => None,
                };
                o.rollback(&service, &env, to.as_ref(), by).await.map(Some)
            }
            .await;
            (done, format!("/services/{env}/{service}"))
        }
        _ => (
            Err(Error::not_found(format!("action {path}"))),
            "/".to_string(),
        ),
    };
    match done {
        Ok(Some(created)) => redirect(
            &format!("/deployments/{}", html::url_part(created.as_str())),
            None,
        ),
        Ok(None) => redirect(&back, None),
        Err(e) => {
            tracing::info!(actor = %viewer.actor, %path, error = %e.chain(), "dashboard: action refused");
            let status = error_status(&e);
            render(inner, viewer, &back, false, Some((&e, status))).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_percent_plus_and_junk_without_panicking() {
        let form = parse_form(b"a=1+2&b=%41%2f&c=%&d=%4&e=%zz&&=x&f");
        assert_eq!(form_value(&form, "a").as_deref(), Some("1 2"));
        assert_eq!(form_value(&form, "b").as_deref(), Some("A/"));
        assert_eq!(form_value(&form, "c").as_deref(), Some("%"));
        assert_eq!(form_value(&form, "d").as_deref(), Some("%4"));
        assert_eq!(form_value(&form, "e").as_deref(), Some("%zz"));
        assert_eq!(form_value(&form, "f").as_deref(), Some(""));
        assert_eq!(form_value(&form, "").as_deref(), Some("x"));
    }
}
