//! `autohealctl ui`: the live fleet web view, served on loopback the way `kubectl proxy` serves
//! the Kubernetes API. The browser speaks plain HTTP to this process; this process speaks mTLS to
//! the coordinator's `FleetService` with the caller's operator or viewer certificate, so the
//! coordinator's port stays mTLS-only.
//!
//! Read-only by construction: the route table ([`route`]) maps GETs to the read RPCs
//! (`GetFleetStatus`, `ListInstances`, `GetInstance`, `ListActions`, `WatchEvents`, and
//! `EnrollmentAdmin.ListEnrollments` for certificate expiry) and nothing else. The page is one HTML file, one script and one stylesheet embedded in the binary; it is
//! live through server-sent events fed by one `WatchEvents` stream ([`feed`]).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use autoheal_common::tls::TlsFiles;
use autoheal_proto::v1;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Frame as BodyFrame, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::sync::CancellationToken;

use autoheal_proto::v1::enrollment_admin_client::EnrollmentAdminClient;
use tonic::transport::Channel;

use crate::{client, tables};

pub mod feed;
pub mod route;

use feed::{Feed, Frame, Watcher};
use route::{Refused, Route};

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// How often an idle event stream says it is alive (so proxies and the browser keep it).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

type Body = BoxBody<Bytes, Infallible>;

/// Where to listen and whether a non-loopback address is allowed.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub listen: SocketAddr,
    pub allow_remote: bool,
}

#[derive(Debug)]
struct Ctx {
    api: client::Client,
    enrollments: EnrollmentAdminClient<Channel>,
    feed: Feed,
    local: SocketAddr,
    allow_remote: bool,
    shutdown: CancellationToken,
}

/// Serves the view until `shutdown`. Prints `autohealctl ui listening on http://ADDR/` on
/// stdout once it accepts connections.
pub async fn serve(
    options: Options,
    endpoint: String,
    files: TlsFiles,
    api: client::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    route::check_listen(options.listen, options.allow_remote)?;
    if !options.listen.ip().is_loopback() {
        eprintln!(
            "autohealctl: warning: serving the fleet view on {} (not loopback): anyone who reaches \
             it sees the fleet with your certificate's rights",
            options.listen
        );
    }
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let local = listener.local_addr().context("listen address")?;
    // EnrollmentAdmin and the health check on the same port, over a channel of their own (the
    // fleet client keeps its).
    let material = files
        .load()
        .with_context(|| format!("cannot load {}", files.cert.display()))?;
    let tls_config = autoheal_common::tls::client_config(material).context("TLS client")?;
    let channel =
        autoheal_common::tls::channel(&endpoint, Arc::new(tls_config), Duration::from_secs(5))?;
    let enrollments = EnrollmentAdminClient::new(channel.clone())
        .max_decoding_message_size(autoheal_proto::MAX_MESSAGE_BYTES);
    let feed = Feed::new(&endpoint);
    let watcher = Watcher {
        api: api.clone(),
        health: tonic_health::pb::health_client::HealthClient::new(channel),
        endpoint: endpoint.clone(),
        files,
        feed: feed.clone(),
    };
    tokio::spawn(watcher.run(shutdown.clone()));
    let ctx = Arc::new(Ctx {
        api,
        enrollments,
        feed,
        local,
        allow_remote: options.allow_remote,
        shutdown: shutdown.clone(),
    });
    println!("autohealctl ui listening on http://{local}/ (coordinator {endpoint})");
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                eprintln!("autohealctl: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let stop = ctx.shutdown.clone();
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(
                    TokioIo::new(tcp),
                    hyper::service::service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
                    }),
                );
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
pub fn stop_on_signal(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
        shutdown.cancel();
    });
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn respond(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Everything the page uses comes from here; nothing else loads, nothing frames it.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    response
}

const JSON: &str = "application/json";

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    respond(status, JSON, full(value.to_string()))
}

fn refused(why: Refused) -> Response<Body> {
    let (status, text) = match why {
        Refused::NotFound => (StatusCode::NOT_FOUND, "not found"),
        Refused::MethodNotAllowed => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: this view is read-only (GET only)",
        ),
        Refused::BadRequest => (StatusCode::BAD_REQUEST, "malformed instance id or cursor"),
    };
    let mut r = json(status, &serde_json::json!({ "error": text }));
    if why == Refused::MethodNotAllowed {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    r
}

fn rpc_failed(status: &tonic::Status, feed: &Feed) -> Response<Body> {
    let code = match status.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_GATEWAY,
    };
    let message = client::explain(status, &feed.link().endpoint, None);
    json(code, &serde_json::json!({ "error": message }))
}

async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !route::host_allowed(host, ctx.local, ctx.allow_remote) {
        return json(
            StatusCode::MISDIRECTED_REQUEST,
            &serde_json::json!({"error": "this view answers only to a loopback Host (see --allow-remote)"}),
        );
    }
    let route = match route::route(req.method().as_str(), req.uri().path(), req.uri().query()) {
        Ok(r) => r,
        Err(why) => return refused(why),
    };
    let mut api = ctx.api.clone();
    match route {
        Route::Page => respond(StatusCode::OK, "text/html; charset=utf-8", full(INDEX)),
        Route::Script => respond(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            full(SCRIPT),
        ),
        Route::Style => respond(StatusCode::OK, "text/css; charset=utf-8", full(STYLE)),
        Route::Status => match api.get_fleet_status(v1::GetFleetStatusRequest {}).await {
            Ok(s) => {
                let mut value = tables::status_json(s.get_ref());
                value["endpoint"] = ctx.feed.link().endpoint.into();
                json(StatusCode::OK, &value)
            }
            Err(status) => rpc_failed(&status, &ctx.feed),
        },
        Route::Instances => match api
            .list_instances(v1::ListInstancesRequest::default())
            .await
        {
            Ok(r) => json(
                StatusCode::OK,
                &tables::instances_json(&r.get_ref().instances),
            ),
            Err(status) => rpc_failed(&status, &ctx.feed),
        },
        Route::Instance(instance_id) => match api
            .get_instance(v1::GetInstanceRequest { instance_id })
            .await
        {
            Ok(r) => json(StatusCode::OK, &tables::instance_json(r.get_ref())),
            Err(status) => rpc_failed(&status, &ctx.feed),
        },
        Route::Enrollments => {
            let mut admin = ctx.enrollments.clone();
            match admin.list_enrollments(v1::ListEnrollmentsRequest {}).await {
                Ok(r) => json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "available": true,
                        "enrollments": r.get_ref().enrollments.iter().map(enrollment_json).collect::<Vec<_>>(),
                    }),
                ),
                // A coordinator without [enroll] serves no EnrollmentAdmin: nothing to show.
                Err(status) if status.code() == tonic::Code::Unimplemented => json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "available": false,
                        "error": "this coordinator does not enroll instances ([enroll] is not configured)",
                    }),
                ),
                Err(status) => rpc_failed(&status, &ctx.feed),
            }
        }
        Route::Actions { instance } => match api
            .list_actions(v1::ListActionsRequest {
                instance_id: instance.unwrap_or_default(),
                limit: 200,
            })
            .await
        {
            Ok(r) => json(
                StatusCode::OK,
                &serde_json::Value::Array(
                    r.get_ref()
                        .actions
                        .iter()
                        .map(tables::action_json)
                        .collect(),
                ),
            ),
            Err(status) => rpc_failed(&status, &ctx.feed),
        },
        Route::Events { after } => {
            // The browser's EventSource resumes with the id of the last event it got.
            // Ids are "<epoch>-<sequence>": one from before this process restarted resumes nothing.
            let resume = req
                .headers()
                .get("last-event-id")
                .and_then(|h| h.to_str().ok())
                .and_then(|s| s.split_once('-'))
                .filter(|(epoch, _)| epoch.parse::<u64>().ok() == Some(ctx.feed.epoch))
                .and_then(|(_, seq)| seq.parse().ok());
            events(ctx, after.or(resume))
        }
    }
}

fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn enrollment_json(e: &v1::Enrollment) -> serde_json::Value {
    serde_json::json!({
        "instance_id": e.instance_id,
        "status": e.status,
        "enrolled_at": rfc3339(e.enrolled_at.as_ref()),
        "certificate_expires_at": rfc3339(e.certificate_expires_at.as_ref()),
        "reason": e.reason,
    })
}

fn sse_event(name: &str, id: Option<(u64, u64)>, data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + 32);
    if let Some((epoch, seq)) = id {
        s.push_str(&format!("id: {epoch}-{seq}\n"));
    }
    s.push_str(&format!("event: {name}\n"));
    for line in data.lines() {
        s.push_str("data: ");
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    Bytes::from(s)
}

fn link_frame(link: &feed::Link) -> Bytes {
    sse_event(
        "link",
        None,
        &serde_json::to_string(link).unwrap_or_default(),
    )
}

/// A page's event stream: the link state, the kept events after its cursor, then live frames.
/// One small task per page writes into the response body and ends when the page goes away.
fn events(ctx: &Ctx, after: Option<u64>) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<BodyFrame<Bytes>, Infallible>>(64);
    let feed::Subscription {
        link,
        backlog,
        mut live,
    } = ctx.feed.subscribe(after);
    let shutdown = ctx.shutdown.clone();
    let epoch = ctx.feed.epoch;
    tokio::spawn(async move {
        let send = |bytes: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(BodyFrame::data(bytes))).await.is_ok() }
        };
        let mut ok =
            send(Bytes::from_static(b"retry: 1000\n\n")).await && send(link_frame(&link)).await;
        for (seq, json) in backlog {
            ok = ok && send(sse_event("fleet", Some((epoch, seq)), &json)).await;
        }
        let mut tick = tokio::time::interval(KEEP_ALIVE);
        tick.tick().await;
        while ok {
            let frame = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                _ = tick.tick() => Bytes::from_static(b": keep-alive\n\n"),
                frame = live.recv() => match frame {
                    Ok(Frame::Link(link)) => link_frame(&link),
                    Ok(Frame::Event(seq, json)) => sse_event("fleet", Some((epoch, seq)), &json),
                    // This page fell behind: it re-reads the fleet instead of missing events.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        sse_event("resync", None, "{}")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            ok = send(frame).await;
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    respond(StatusCode::OK, "text/event-stream", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One HTTP/1.1 request over a fresh connection: (status code, the whole response).
    async fn request(addr: SocketAddr, method: &str, path: &str, host: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await.expect("read");
        let text = String::from_utf8_lossy(&out).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, text)
    }

    /// The server itself, with no coordinator behind it: what it refuses needs none, and what
    /// needs one says why it failed.
    #[tokio::test]
    async fn the_server_answers_reads_and_refuses_writes_foreign_hosts_and_unknown_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let td = autoheal_proto::identity::TrustDomain::new("ui.test").expect("trust domain");
        crate::pki::init(dir.path(), &td, &[], &[], false).expect("pki");
        let files = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("viewer-readonly.pem"),
            key: dir.path().join("viewer-readonly-key.pem"),
        };
        // Nobody listens there.
        let endpoint = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let api = client::connect(&endpoint, &files).expect("client");
        let shutdown = CancellationToken::new();
        let options = Options {
            listen: addr,
            allow_remote: false,
        };
        let server = tokio::spawn(serve(options, endpoint, files, api, shutdown.clone()));
        let host = addr.to_string();
        let mut up = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(up, "the server did not start");

        let (code, page) = request(addr, "GET", "/", &host).await;
        assert_eq!(code, 200, "{page}");
        assert!(
            page.contains("content-security-policy: default-src 'none'"),
            "{page}"
        );
        assert!(page.contains("<script src=\"/app.js\">"), "{page}");
        assert_eq!(request(addr, "GET", "/app.js", &host).await.0, 200);
        for (method, path, want) in [
            ("POST", "/api/status", 405),
            ("PUT", "/api/instance/i-1", 405),
            ("DELETE", "/api/events", 405),
            ("POST", "/api/pause", 404),
            ("GET", "/api/drain", 404),
            ("GET", "/api/instance/i-1/skip", 404),
            ("GET", "/api/instance/a%20b", 400),
        ] {
            let (code, text) = request(addr, method, path, &host).await;
            assert_eq!(code, want, "{method} {path}: {text}");
        }
        let (code, text) = request(addr, "GET", "/api/status", "rebound.example:80").await;
        assert_eq!(code, 421, "a foreign Host is refused: {text}");
        let (code, text) = request(addr, "GET", "/api/status", &host).await;
        assert_eq!(code, 502, "{text}");
        assert!(text.contains("cannot connect to"), "says why: {text}");

        shutdown.cancel();
        server.await.expect("joined").expect("served");
    }

    #[test]
    fn server_sent_events_put_each_line_of_data_on_its_own_data_field() {
        assert_eq!(
            sse_event("fleet", Some((5, 7)), "{\"a\":1}"),
            Bytes::from_static(b"id: 5-7\nevent: fleet\ndata: {\"a\":1}\n\n")
        );
        assert_eq!(
            sse_event("link", None, "x\ny"),
            Bytes::from_static(b"event: link\ndata: x\ndata: y\n\n")
        );
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for asset in [INDEX, SCRIPT, STYLE] {
            assert!(!asset.contains("http://"), "an asset names an http:// URL");
            assert!(
                !asset.contains("https://"),
                "an asset names an https:// URL"
            );
        }
        assert!(INDEX.contains("/app.js") && INDEX.contains("/style.css"));
        // Nothing on the page steers the fleet.
        for verb in [
            "method: 'POST'",
            "method:\"POST\"",
            "/api/pause",
            "/api/drain",
        ] {
            assert!(!SCRIPT.contains(verb), "app.js mentions {verb}");
        }
    }
}
