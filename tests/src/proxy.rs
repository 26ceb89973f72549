//! A loopback fault proxy in front of moto: counts every AWS call by action name and injects
//! throttling, 5xx errors and delays on demand, so retry paths and "called exactly once" can be
//! checked against the real API.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 400 with the protocol's throttling error.
    Throttle,
    /// HTTP 500.
    ServerError,
    /// HTTP 503.
    Unavailable,
    /// Forward, but only after this long.
    Delay(Duration),
    /// HTTP 403 AccessDenied: what bad or missing credentials get.
    AccessDenied,
}

#[derive(Debug, Default)]
struct State {
    counts: HashMap<String, u32>,
    faults: HashMap<String, VecDeque<Fault>>,
    /// The body of every request, by action, oldest first.
    bodies: HashMap<String, Vec<String>>,
    /// Instances whose target health is rewritten to `unhealthy` (moto always says healthy).
    failing_targets: Vec<String>,
    /// Every call of these actions waits a uniformly random time up to this before it is
    /// forwarded, so a kill can land while a call is in flight.
    delays: HashMap<String, Duration>,
    /// The bodies of the requests AWS (moto) accepted (2xx), by action, oldest first.
    accepted: HashMap<String, Vec<String>>,
    /// Actions the proxy answers itself with this (query-protocol XML) body: what moto cannot
    /// produce (an instance refresh under way, for one).
    answers: HashMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| handle(req, upstream, state.clone(), client.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests for `action` (e.g. `DeregisterTargets`) reached the proxy.
    pub fn count(&self, action: &str) -> u32 {
        self.lock().counts.get(action).copied().unwrap_or(0)
    }

    /// The next calls of `action` get these faults, in order; later ones pass.
    pub fn inject(&self, action: &str, faults: &[Fault]) {
        self.lock()
            .faults
            .entry(action.to_owned())
            .or_default()
            .extend(faults.iter().copied());
    }

    /// Drops every fault still queued.
    pub fn clear(&self) {
        self.lock().faults.clear();
    }

    /// The bodies of the requests for `action` that reached the proxy, oldest first.
    pub fn requests(&self, action: &str) -> Vec<String> {
        self.lock().bodies.get(action).cloned().unwrap_or_default()
    }

    /// From now on every call of `action` waits a uniformly random time in `[0, max]` before it
    /// is forwarded. The forward runs on its own: a caller that dies (or gives up) meanwhile does
    /// not stop it, as a request already on its way to AWS lands whatever its sender does.
    pub fn delay_every(&self, action: &str, max: Duration) {
        self.lock().delays.insert(action.to_owned(), max);
    }

    /// How many calls of `action` naming `instance` AWS accepted (answered 2xx): what "the call
    /// happened" means, however many attempts reached the proxy.
    pub fn accepted_for(&self, action: &str, instance: &str) -> usize {
        self.lock().accepted.get(action).map_or(0, |bodies| {
            bodies.iter().filter(|b| b.contains(instance)).count()
        })
    }

    /// How many calls of `action` naming `instance` reached the proxy (accepted or not yet).
    pub fn reached_for(&self, action: &str, instance: &str) -> usize {
        self.lock().bodies.get(action).map_or(0, |bodies| {
            bodies.iter().filter(|b| b.contains(instance)).count()
        })
    }

    /// From now on the proxy answers `action` itself with `xml` (HTTP 200); `None` forwards it
    /// again.
    pub fn answer(&self, action: &str, xml: Option<&str>) {
        let mut state = self.lock();
        match xml {
            Some(xml) => state.answers.insert(action.to_owned(), xml.to_owned()),
            None => state.answers.remove(action),
        };
    }

    /// From now on, `DescribeTargetHealth` answers say `instance` fails its health checks.
    pub fn fail_target(&self, instance: &str) {
        self.lock().failing_targets.push(instance.to_owned());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The AWS action a request calls: `X-Amz-Target: AmazonSSM.SendCommand` (JSON protocols) or
/// `Action=DeregisterTargets` in the form body (query protocol).
fn action_of(headers: &http::HeaderMap, body: &[u8]) -> (String, bool) {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        let action = target.rsplit('.').next().unwrap_or(target).to_owned();
        return (action, true);
    }
    let body = String::from_utf8_lossy(body);
    let action = body
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("unknown")
        .to_owned();
    (action, false)
}

/// Rewrites the `<member>` of each failing instance to `unhealthy`.
fn fail_targets(xml: &str, failing: &[String]) -> String {
    xml.split_inclusive("</member>")
        .map(|member| {
            if failing
                .iter()
                .any(|id| member.contains(&format!("<Id>{id}</Id>")))
            {
                member.replace(
                    "<State>healthy</State>",
                    "<State>unhealthy</State><Reason>Target.FailedHealthChecks</Reason>",
                )
            } else {
                member.to_owned()
            }
        })
        .collect()
}

fn respond(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-amzn-requestid", "fault-proxy")
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

async fn handle(
    req: Request<Incoming>,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (action, json) = action_of(&parts.headers, &body);
    let (fault, failing, answer) = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        *state.counts.entry(action.clone()).or_default() += 1;
        state
            .bodies
            .entry(action.clone())
            .or_default()
            .push(String::from_utf8_lossy(&body).into_owned());
        let fault = state.faults.get_mut(&action).and_then(VecDeque::pop_front);
        let fault = fault.or_else(|| {
            state
                .delays
                .get(&action)
                .map(|max| Fault::Delay(max.mul_f64(rand::random::<f64>())))
        });
        (
            fault,
            state.failing_targets.clone(),
            state.answers.get(&action).cloned(),
        )
    };
    if let Some(xml) = answer {
        return Ok(respond(200, "text/xml", xml));
    }
    match fault {
        Some(Fault::Throttle) if json => {
            return Ok(respond(
                400,
                "application/x-amz-json-1.1",
                r#"{"__type":"ThrottlingException","message":"Rate exceeded (fault proxy)"}"#
                    .into(),
            ));
        }
        Some(Fault::Throttle) => {
            return Ok(respond(
                400,
                "text/xml",
                "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded (fault proxy)</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>".into(),
            ));
        }
        Some(Fault::AccessDenied) if json => {
            return Ok(respond(
                400,
                "application/x-amz-json-1.1",
                r#"{"__type":"AccessDeniedException","message":"User is not authorized (fault proxy)"}"#.into(),
            ));
        }
        Some(Fault::AccessDenied) => {
            return Ok(respond(
                403,
                "text/xml",
                "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User is not authorized to perform this action (fault proxy)</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>".into(),
            ));
        }
        Some(Fault::ServerError) => {
            return Ok(respond(
                500,
                "text/plain",
                "internal error (fault proxy)".into(),
            ));
        }
        Some(Fault::Unavailable) => {
            return Ok(respond(
                503,
                "text/plain",
                "unavailable (fault proxy)".into(),
            ));
        }
        Some(Fault::Delay(d)) => {
            // Detached: the forward completes even if the caller is gone by then.
            let state = state.clone();
            let action = action.clone();
            let forwarded = tokio::spawn(async move {
                tokio::time::sleep(d).await;
                forward(parts, body, upstream, &action, &state, &client, &failing).await
            });
            return Ok(forwarded
                .await
                .unwrap_or_else(|e| respond(502, "text/plain", format!("proxy task: {e}"))));
        }
        None => {}
    }
    Ok(forward(parts, body, upstream, &action, &state, &client, &failing).await)
}

async fn forward(
    parts: http::request::Parts,
    body: Bytes,
    upstream: SocketAddr,
    action: &str,
    state: &Mutex<State>,
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    failing: &[String],
) -> Response<Full<Bytes>> {
    let sent = String::from_utf8_lossy(&body).into_owned();
    let uri = format!(
        "http://{upstream}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut forward = Request::builder().method(parts.method).uri(uri);
    for (name, value) in &parts.headers {
        forward = forward.header(name, value);
    }
    let forward = forward.body(Full::new(body)).expect("request");
    match client.request(forward).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            if parts.status.is_success() {
                state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .accepted
                    .entry(action.to_owned())
                    .or_default()
                    .push(sent);
            }
            let mut body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if action == "DescribeTargetHealth" && !failing.is_empty() {
                body = Bytes::from(fail_targets(&String::from_utf8_lossy(&body), failing));
                parts.headers.remove("content-length");
            }
            Response::from_parts(parts, Full::new(body))
        }
        Err(e) => respond(502, "text/plain", format!("upstream: {e}")),
    }
}
