//! Binds roles to methods, in one place, before any handler runs. Deny by default.
//!
//! - `/instance/<id>`: `AgentService` (the handler then checks the Hello speaks for `<id>`) and
//!   `EnrollService.Renew` (for the instance its certificate names).
//! - `/operator/<name>`: all of `FleetService` and `EnrollmentAdmin`.
//! - `/viewer/<name>`: the read calls of `FleetService`, and `EnrollmentAdmin.ListEnrollments`.
//! - anyone with a fleet certificate: `grpc.health.v1.Health` and server reflection.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use autoheal_proto::identity::Role;
use tonic::{Status, body::Body};

use super::PeerInfo;

const FLEET_READS: &[&str] = &[
    "GetFleetStatus",
    "ListInstances",
    "GetInstance",
    "WatchEvents",
    "ListActions",
    "WhatIf",
];
const FLEET_WRITES: &[&str] = &["Pause", "Resume", "Drain", "SetSkip"];
const ENROLLMENT_ADMIN: &[&str] = &["ListEnrollments", "ResetEnrollment", "DenyEnrollment"];

/// May `role` call the gRPC method at `path` (`/package.Service/Method`)?
pub fn authorize(role: &Role, path: &str) -> Result<(), String> {
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .ok_or_else(|| format!("{path} is not a gRPC method"))?;
    let allowed = match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => true,
        "autoheal.v1.AgentService" => matches!(role, Role::Instance(_)),
        // Challenge and Enroll are for callers without a certificate: the enrollment listener.
        "autoheal.v1.EnrollService" => matches!(role, Role::Instance(_)) && method == "Renew",
        "autoheal.v1.EnrollmentAdmin" => match role {
            Role::Operator(_) => ENROLLMENT_ADMIN.contains(&method),
            Role::Viewer(_) => method == "ListEnrollments",
            Role::Instance(_) => false,
        },
        "autoheal.v1.FleetService" => match role {
            Role::Operator(_) => FLEET_READS.contains(&method) || FLEET_WRITES.contains(&method),
            Role::Viewer(_) => FLEET_READS.contains(&method),
            Role::Instance(_) => false,
        },
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        let who = match role {
            Role::Instance(_) => "an instance certificate",
            Role::Operator(_) => "an operator certificate",
            Role::Viewer(_) => "a viewer certificate",
        };
        Err(format!("{who} may not call {service}/{method}"))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct AuthzLayer;

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authz { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authz<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let decision = match request.extensions().get::<PeerInfo>() {
            Some(peer) => authorize(&peer.identity.role, request.uri().path()).inspect_err(|_| {
                tracing::warn!(peer = %peer.identity, path = request.uri().path(), "permission denied");
            }),
            None => Err("no verified client certificate".to_owned()),
        };
        match decision {
            Ok(()) => {
                // The clone-and-swap keeps the instance that poll_ready readied.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move {
                    let response = inner.call(request).await?;
                    Ok(resource_exhausted_for_oversize(response))
                })
            }
            Err(why) => Box::pin(async move { Ok(Status::permission_denied(why).into_http()) }),
        }
    }
}

/// tonic rejects an oversized request with OUT_OF_RANGE; the gRPC spec (and every other
/// implementation) says RESOURCE_EXHAUSTED, which is what clients retry-classify on.
fn resource_exhausted_for_oversize(mut response: http::Response<Body>) -> http::Response<Body> {
    let headers = response.headers_mut();
    let oversize = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers.get("grpc-message").is_some_and(|m| {
            let m = m.to_str().unwrap_or_default();
            m.contains("length%20too%20large") || m.contains("length too large")
        });
    if oversize {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_bind_to_methods() {
        let instance = Role::Instance("i-1".into());
        let operator = Role::Operator("alice".into());
        let viewer = Role::Viewer("grafana".into());
        let connect = "/autoheal.v1.AgentService/Connect";
        let pause = "/autoheal.v1.FleetService/Pause";
        let status = "/autoheal.v1.FleetService/GetFleetStatus";
        let health = "/grpc.health.v1.Health/Check";

        assert!(authorize(&instance, connect).is_ok());
        assert!(authorize(&instance, status).is_err());
        assert!(authorize(&instance, pause).is_err());
        assert!(authorize(&operator, connect).is_err());
        assert!(authorize(&operator, pause).is_ok());
        assert!(authorize(&operator, status).is_ok());
        assert!(authorize(&viewer, status).is_ok());
        assert!(authorize(&viewer, "/autoheal.v1.FleetService/WatchEvents").is_ok());
        assert!(authorize(&viewer, pause).is_err());
        assert!(authorize(&viewer, "/autoheal.v1.FleetService/Drain").is_err());
        assert!(authorize(&viewer, "/autoheal.v1.FleetService/Resume").is_err());
        assert!(authorize(&viewer, "/autoheal.v1.FleetService/SetSkip").is_err());
        assert!(authorize(&operator, "/autoheal.v1.FleetService/SetSkip").is_ok());
        let renew = "/autoheal.v1.EnrollService/Renew";
        let enroll = "/autoheal.v1.EnrollService/Enroll";
        let list = "/autoheal.v1.EnrollmentAdmin/ListEnrollments";
        let reset = "/autoheal.v1.EnrollmentAdmin/ResetEnrollment";
        let deny = "/autoheal.v1.EnrollmentAdmin/DenyEnrollment";
        assert!(authorize(&instance, renew).is_ok());
        assert!(
            authorize(&instance, enroll).is_err(),
            "enrollment has its own listener"
        );
        assert!(authorize(&operator, renew).is_err());
        assert!(authorize(&instance, list).is_err());
        assert!(authorize(&viewer, list).is_ok());
        assert!(authorize(&viewer, reset).is_err());
        assert!(authorize(&viewer, deny).is_err());
        assert!(authorize(&operator, reset).is_ok());
        assert!(authorize(&operator, deny).is_ok());
        assert!(authorize(&operator, "/autoheal.v1.EnrollmentAdmin/Other").is_err());
        for role in [&instance, &operator, &viewer] {
            assert!(authorize(role, health).is_ok());
            assert!(
                authorize(role, "/other.Service/Method").is_err(),
                "deny by default"
            );
            assert!(authorize(role, "/autoheal.v1.FleetService/NewMethod").is_err());
        }
    }
}
