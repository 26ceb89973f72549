//! The web view's route table and the address checks, as pure functions: which requests the
//! server answers (GET only, each mapped to one read RPC), and which listen addresses and `Host`
//! headers it accepts.

use std::net::SocketAddr;

/// What a request asks for. Every variant is a read; nothing here maps to Pause, Resume, Drain,
/// SetSkip, ResetEnrollment or DenyEnrollment, and no method but GET (and HEAD) reaches one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Page,
    Script,
    Style,
    /// `GetFleetStatus`.
    Status,
    /// `ListInstances`.
    Instances,
    /// `GetInstance`.
    Instance(String),
    /// `EnrollmentAdmin.ListEnrollments` (viewers may call it): certificate expiry.
    Enrollments,
    /// `ListActions`, optionally for one instance.
    Actions {
        instance: Option<String>,
    },
    /// `WatchEvents`, as server-sent events; `after` resumes after that cursor.
    Events {
        after: Option<u64>,
    },
}

/// Why a request gets no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// 404: no such path.
    NotFound,
    /// 405: the path exists but only for GET.
    MethodNotAllowed,
    /// 400: a malformed instance id or cursor.
    BadRequest,
}

/// Instance ids as EC2 and the PKI spell them; anything else is refused before any RPC.
fn instance_id(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    ok.then(|| s.to_owned())
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Maps a method, path and query to a route.
pub fn route(method: &str, path: &str, query: Option<&str>) -> Result<Route, Refused> {
    let found = match path {
        "/" | "/index.html" => Route::Page,
        "/app.js" => Route::Script,
        "/style.css" => Route::Style,
        "/api/status" => Route::Status,
        "/api/instances" => Route::Instances,
        "/api/enrollments" => Route::Enrollments,
        "/api/actions" => Route::Actions {
            instance: match query_param(query, "instance") {
                None | Some("") => None,
                Some(id) => Some(instance_id(id).ok_or(Refused::BadRequest)?),
            },
        },
        "/api/events" => Route::Events {
            after: match query_param(query, "after") {
                None | Some("") => None,
                Some(n) => Some(n.parse().map_err(|_| Refused::BadRequest)?),
            },
        },
        _ => match path.strip_prefix("/api/instance/") {
            Some(id) if !id.contains('/') => {
                Route::Instance(instance_id(id).ok_or(Refused::BadRequest)?)
            }
            _ => return Err(Refused::NotFound),
        },
    };
    if method == "GET" || method == "HEAD" {
        Ok(found)
    } else {
        Err(Refused::MethodNotAllowed)
    }
}

/// A listen address other than loopback needs `--allow-remote`: the page shows the whole fleet
/// to whoever reaches it, with the caller's certificate.
pub fn check_listen(addr: SocketAddr, allow_remote: bool) -> Result<(), NotLoopback> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        Err(NotLoopback(addr))
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{0} is not a loopback address: the page shows the fleet with your certificate to anyone who \
     reaches it; pass --allow-remote if that is what you want"
)]
pub struct NotLoopback(pub SocketAddr);

/// Whether a request's `Host` header names this server by a loopback name. A page elsewhere
/// that rebinds its own DNS name to 127.0.0.1 sends its own name here, and is refused; with
/// `--allow-remote` any host is accepted.
pub fn host_allowed(host: Option<&str>, local: SocketAddr, allow_remote: bool) -> bool {
    if allow_remote {
        return true;
    }
    let Some(host) = host else { return false };
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((name, after)) => (name, after.strip_prefix(':')),
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    port.is_none_or(|p| p.parse::<u16>().ok() == Some(local.port()))
        && (name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_a_get_of_a_read() {
        assert_eq!(route("GET", "/", None), Ok(Route::Page));
        assert_eq!(route("GET", "/api/status", None), Ok(Route::Status));
        assert_eq!(route("HEAD", "/api/instances", None), Ok(Route::Instances));
        assert_eq!(
            route("GET", "/api/enrollments", None),
            Ok(Route::Enrollments)
        );
        assert_eq!(
            route("GET", "/api/instance/i-0abc", None),
            Ok(Route::Instance("i-0abc".into()))
        );
        assert_eq!(
            route("GET", "/api/actions", Some("instance=i-1&x=2")),
            Ok(Route::Actions {
                instance: Some("i-1".into())
            })
        );
        assert_eq!(
            route("GET", "/api/events", Some("after=42")),
            Ok(Route::Events { after: Some(42) })
        );
        assert_eq!(
            route("GET", "/api/events", None),
            Ok(Route::Events { after: None })
        );
    }

    #[test]
    fn writes_and_steering_paths_are_refused() {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            for path in [
                "/",
                "/api/status",
                "/api/instances",
                "/api/instance/i-1",
                "/api/events",
                "/api/enrollments",
            ] {
                assert_eq!(
                    route(method, path, None),
                    Err(Refused::MethodNotAllowed),
                    "{method} {path}"
                );
            }
        }
        for path in [
            "/api/pause",
            "/api/resume",
            "/api/drain",
            "/api/skip",
            "/api/enrollments/i-1/reset",
            "/api/deny",
            "/api/instance/i-1/drain",
            "/api",
            "/favicon.ico",
            "/../etc/passwd",
        ] {
            assert_eq!(route("GET", path, None), Err(Refused::NotFound), "{path}");
            assert_eq!(route("POST", path, None), Err(Refused::NotFound), "{path}");
        }
    }

    #[test]
    fn malformed_ids_and_cursors_are_refused_before_any_call() {
        assert_eq!(
            route("GET", "/api/instance/", None),
            Err(Refused::BadRequest)
        );
        assert_eq!(
            route("GET", "/api/instance/i%2F..", None),
            Err(Refused::BadRequest)
        );
        assert_eq!(
            route("GET", "/api/events", Some("after=-1")),
            Err(Refused::BadRequest)
        );
        assert_eq!(
            route("GET", "/api/actions", Some("instance=a b")),
            Err(Refused::BadRequest)
        );
    }

    #[test]
    fn only_loopback_listens_without_allow_remote() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(check_listen(addr("127.0.0.1:8080"), false).is_ok());
        assert!(check_listen(addr("127.8.0.1:8080"), false).is_ok());
        assert!(check_listen(addr("[::1]:8080"), false).is_ok());
        assert!(check_listen(addr("0.0.0.0:8080"), false).is_err());
        assert!(check_listen(addr("[::]:8080"), false).is_err());
        assert!(check_listen(addr("10.1.2.3:8080"), false).is_err());
        assert!(check_listen(addr("0.0.0.0:8080"), true).is_ok());
        let message = check_listen(addr("0.0.0.0:8080"), false)
            .expect_err("refused")
            .to_string();
        assert!(message.contains("--allow-remote"), "{message}");
    }

    #[test]
    fn host_header_must_name_loopback_unless_remote_is_allowed() {
        let local: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        assert!(host_allowed(Some("127.0.0.1:8080"), local, false));
        assert!(host_allowed(Some("localhost:8080"), local, false));
        assert!(host_allowed(Some("[::1]:8080"), local, false));
        assert!(host_allowed(Some("localhost"), local, false));
        assert!(!host_allowed(Some("evil.example:8080"), local, false));
        assert!(!host_allowed(Some("localhost:9999"), local, false));
        assert!(!host_allowed(None, local, false));
        assert!(host_allowed(Some("fleet.corp:8080"), local, true));
    }
}
