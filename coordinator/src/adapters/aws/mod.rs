//! The AWS adapter: one place that builds SDK clients (region, endpoint override, timeouts), one
//! `is_retryable`, one retry loop with backoff and full jitter, and (in `sdk`) the SDK
//! implementations of the ports in `ports::aws`.

pub mod actions;
pub mod instances;
pub mod sdk;

use std::{fmt, future::Future, time::Duration};

use aws_sdk_autoscaling::error::{ProvideErrorMetadata, SdkError};

use crate::ports::aws::{AwsError, Fence, Unfenced};

/// Where and how to reach AWS.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    pub region: String,
    /// e.g. `http://127.0.0.1:5000` for moto; `None` for the real endpoints.
    pub endpoint: Option<String>,
    /// Bound on one attempt of one call.
    pub call_timeout: Duration,
    /// Attempts of one call before it's reported failed (and retried at the next pass).
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for AwsSettings {
    fn default() -> Self {
        Self {
            region: "us-east-1".to_owned(),
            endpoint: None,
            call_timeout: Duration::from_secs(10),
            max_attempts: 5,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Error codes AWS uses for throttling and transient server trouble.
const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "SlowDown",
    "PriorRequestNotComplete",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "EC2ThrottledException",
];

/// The one answer to "is it worth trying this call again?": throttling, 5xx, timeouts and
/// connection trouble are; client errors (bad request, access denied, not found) are not.
pub fn is_retryable<E, R>(error: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
    R: HttpStatus,
{
    match error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status();
            status >= 500
                || status == 429
                || service
                    .err()
                    .code()
                    .is_some_and(|code| RETRYABLE_CODES.contains(&code))
        }
        SdkError::ConstructionFailure(_) => false,
        _ => false,
    }
}

/// The HTTP status of a raw response, whatever the SDK's response type.
pub trait HttpStatus {
    fn status(&self) -> u16;
}

impl HttpStatus for aws_sdk_autoscaling::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

fn describe<E, R>(error: &SdkError<E, R>) -> (String, Option<String>)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    match error {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().map(str::to_owned);
            let message = match (e.code(), e.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_owned(),
                (None, Some(m)) => m.to_owned(),
                (None, None) => e.to_string(),
            };
            (message, code)
        }
        other => {
            let mut message = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            (message, None)
        }
    }
}

/// Runs `call` until it succeeds, fails with an error retrying can't fix, or runs out of
/// attempts; each attempt bounded by the settings' call timeout. For reads: no fence.
pub async fn retry<T, E, R, F, Fut>(
    settings: &AwsSettings,
    operation: &'static str,
    call: F,
) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, R>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: HttpStatus + fmt::Debug,
{
    retry_fenced(settings, operation, &Unfenced, call).await
}

/// An attempt is not sent with less time than this left before the fence's deadline.
const MIN_ATTEMPT: Duration = Duration::from_millis(250);

/// [`retry`] for a destructive call: before every attempt (the first and each retry) the fence
/// is asked how long this coordinator may still act; with no deadline, or too little time
/// left, nothing is sent. Each attempt's timeout ends by that deadline, so no attempt of a
/// leader outlives what it knows of its lease.
pub async fn retry_fenced<T, E, R, F, Fut>(
    settings: &AwsSettings,
    operation: &'static str,
    fence: &dyn Fence,
    mut call: F,
) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, R>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: HttpStatus + fmt::Debug,
{
    let mut attempt = 0;
    loop {
        let now = tokio::time::Instant::now();
        let left = fence
            .act_deadline()
            .map(|deadline| deadline.saturating_duration_since(now))
            .filter(|left| *left >= MIN_ATTEMPT);
        let Some(left) = left else {
            crate::metrics::global().aws_call(operation, "fenced");
            tracing::warn!(
                operation,
                attempt,
                "not sending: this coordinator may no longer lead"
            );
            return Err(AwsError {
                operation,
                message: "not sent: this coordinator may no longer lead (lease lapsed or lost)"
                    .to_owned(),
                code: None,
                retryable: false,
                attempts: attempt,
                fenced: true,
            });
        };
        attempt += 1;
        let timeout = settings.call_timeout.min(left);
        let outcome = tokio::time::timeout(timeout, call()).await;
        let (message, code, retryable) = match outcome {
            Ok(Ok(value)) => {
                crate::metrics::global().aws_call(operation, "ok");
                return Ok(value);
            }
            Ok(Err(error)) => {
                let retryable = is_retryable(&error);
                let (message, code) = describe(&error);
                (message, code, retryable)
            }
            Err(_) => (format!("no answer within {timeout:?}"), None, true),
        };
        if !retryable || attempt >= settings.max_attempts {
            crate::metrics::global().aws_call(operation, "failed");
            return Err(AwsError {
                operation,
                message,
                code,
                retryable,
                attempts: attempt,
                fenced: false,
            });
        }
        let wait =
            autoheal_common::backoff::random(attempt, settings.base_backoff, settings.max_backoff);
        // No point waiting for a retry the fence will not let out.
        let after_wait = tokio::time::Instant::now() + wait + MIN_ATTEMPT;
        if fence
            .act_deadline()
            .is_none_or(|deadline| after_wait > deadline)
        {
            crate::metrics::global().aws_call(operation, "fenced");
            return Err(AwsError {
                operation,
                message: format!("{message}; not retried: this coordinator may not lead by then"),
                code,
                retryable,
                attempts: attempt,
                fenced: true,
            });
        }
        crate::metrics::global().aws_call(operation, "retried");
        tracing::warn!(operation, attempt, error = %message, ?wait, "AWS call failed; retrying");
        tokio::time::sleep(wait).await;
    }
}

impl AwsSettings {
    /// The longest a call may take, all attempts and waits included: after this, a call that
    /// was in flight when its coordinator died can no longer land (with `skew` for clocks).
    pub fn longest_call(&self, skew: Duration) -> Duration {
        (self.call_timeout + self.max_backoff) * self.max_attempts + skew
    }
}

/// A unit name (from an agent's Hello) that may not reach a shell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unit name {0:?} is not a plain systemd unit name")]
pub struct UnsafeUnit(pub String);

/// The fixed SSM remediation script: restart the agent, then each declared unit. Unit names come
/// from the agent's Hello, but only names made of a safe alphabet get in — nothing from the wire
/// reaches the shell unchecked.
pub fn remediation_script(units: &[String]) -> Result<Vec<String>, UnsafeUnit> {
    let mut commands = vec!["systemctl restart autoheal-agent.service".to_owned()];
    for unit in units {
        let safe = !unit.is_empty()
            && unit.len() <= 256
            && !unit.starts_with('-')
            && unit.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'@' | b':')
            });
        if !safe {
            return Err(UnsafeUnit(autoheal_common::config::prefix(unit)));
        }
        commands.push(format!("systemctl restart -- {unit}"));
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fence whose deadline is set by the test.
    struct TestFence(std::sync::Mutex<Option<tokio::time::Instant>>);

    impl Fence for TestFence {
        fn act_deadline(&self) -> Option<tokio::time::Instant> {
            *self.0.lock().expect("lock")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fenced_call_is_not_sent_and_a_lapsing_lease_stops_retries() {
        use aws_sdk_autoscaling::{
            config::http::HttpResponse, error::SdkError,
            operation::describe_auto_scaling_groups::DescribeAutoScalingGroupsError as E,
        };
        let settings = AwsSettings {
            max_attempts: 5,
            call_timeout: Duration::from_secs(1),
            base_backoff: Duration::from_millis(400),
            max_backoff: Duration::from_millis(400),
            ..Default::default()
        };
        let sent = std::sync::atomic::AtomicU32::new(0);
        let call = || {
            sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                // Slower than any attempt's timeout: each attempt ends at its deadline.
                tokio::time::sleep(Duration::from_secs(60)).await;
                Err::<(), _>(SdkError::<E, HttpResponse>::timeout_error("slow"))
            }
        };
        // Not leading: nothing is sent at all.
        let none = TestFence(std::sync::Mutex::new(None));
        let e = retry_fenced(&settings, "FenceTestCall", &none, call)
            .await
            .expect_err("fenced");
        assert!(e.fenced && !e.retryable);
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 0);
        // A lease that lapses 1.5 s from now: one full attempt, then not enough time for a
        // second (whose wait alone ends past the deadline).
        let lapsing = TestFence(std::sync::Mutex::new(Some(
            tokio::time::Instant::now() + Duration::from_millis(1500),
        )));
        let e = retry_fenced(&settings, "FenceTestCall", &lapsing, call)
            .await
            .expect_err("fenced");
        assert!(e.fenced, "{e}");
        let attempts = sent.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=2).contains(&attempts), "{attempts} attempts");
        assert!(tokio::time::Instant::now() <= lapsing.act_deadline().expect("set") + MIN_ATTEMPT);
    }

    #[test]
    fn remediation_script_refuses_anything_but_unit_names() {
        assert_eq!(
            remediation_script(&["web.service".into(), "worker@1.service".into()]).expect("ok"),
            [
                "systemctl restart autoheal-agent.service",
                "systemctl restart -- web.service",
                "systemctl restart -- worker@1.service"
            ]
        );
        for bad in [
            "web; rm -rf /",
            "$(reboot)",
            "a b",
            "--force",
            "",
            "web`id`",
        ] {
            assert!(remediation_script(&[bad.into()]).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn aws_retries_are_counted_by_outcome() {
        use aws_sdk_autoscaling::{
            config::http::HttpResponse, error::SdkError,
            operation::describe_auto_scaling_groups::DescribeAutoScalingGroupsError as E,
        };

        let settings = AwsSettings {
            max_attempts: 2,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            ..Default::default()
        };
        let count = |outcome: &str| {
            crate::metrics::global()
                .aws_calls
                .get_or_create(&crate::metrics::AwsCallLabels {
                    operation: "MetricsTestCall".to_owned(),
                    outcome: outcome.to_owned(),
                })
                .get()
        };
        let mut fail_first = true;
        let done: Result<(), _> = retry(&settings, "MetricsTestCall", || {
            let fail = std::mem::take(&mut fail_first);
            async move {
                if fail {
                    Err(SdkError::<E, HttpResponse>::timeout_error("slow"))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(done.is_ok());
        assert_eq!((count("retried"), count("ok"), count("failed")), (1, 1, 0));
        let failed: Result<(), _> = retry(&settings, "MetricsTestCall", || async {
            Err(SdkError::<E, HttpResponse>::timeout_error("slow"))
        })
        .await;
        assert!(failed.is_err());
        assert_eq!((count("retried"), count("ok"), count("failed")), (2, 1, 1));
    }
}
