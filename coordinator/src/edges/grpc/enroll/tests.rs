use super::*;

#[tokio::test(start_paused = true)]
async fn the_limit_is_per_address_and_refills() {
    let limiter = RateLimiter::new(60, 2);
    let a: IpAddr = [10, 0, 0, 1].into();
    let b: IpAddr = [10, 0, 0, 2].into();
    assert!(limiter.allow(a));
    assert!(limiter.allow(a));
    assert!(!limiter.allow(a), "burst spent");
    assert!(limiter.allow(b), "another address has its own bucket");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(limiter.allow(a), "one token a second");
    assert!(!limiter.allow(a));
}
