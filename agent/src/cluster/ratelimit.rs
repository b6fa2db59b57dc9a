//! The API client's rate limit, as upstream's `kubeAPIQPS` / `kubeAPIBurst`: a token bucket
//! that holds `burst` tokens, refills `qps` a second, and lets a request go only with a
//! token, as client-go's rate limiter does for the kubelet's client.
//!
//! It is a tower layer around the whole kube client stack ([`RateLimitLayer`]), so every
//! request any part of cluster mode makes takes a token when it is sent: a watch is one
//! request however long it streams. A request that finds the bucket empty waits for its
//! token; the client's buffer queues the requests behind it, so they go out in order.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// A token bucket in the form of its "theoretical arrival time" (GCRA): the moment the bucket
/// would be full again. Exact on any clock: no fractions of a token are kept.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// The time one token takes to come back (`1 s / qps`).
    interval: Duration,
    /// How far `full_at` may be ahead of now and still leave a token (`(burst - 1)` tokens).
    slack: Duration,
    full_at: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `qps` a second (both at least 1).
    #[must_use]
    pub fn new(qps: u32, burst: u32, now: Instant) -> Self {
        let interval = Duration::from_secs(1) / qps.max(1);
        Self {
            interval,
            slack: interval * (burst.max(1) - 1),
            full_at: now,
        }
    }

    /// Takes a token at `now`, or says when the next one is there.
    ///
    /// # Errors
    /// The bucket is empty: the instant a token will be there.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Instant> {
        let full_at = self.full_at.max(now);
        if full_at > now + self.slack {
            return Err(full_at - self.slack);
        }
        self.full_at = full_at + self.interval;
        Ok(())
    }
}

/// Wraps a service in a [`RateLimit`] of `qps` requests a second with bursts of `burst`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitLayer {
    qps: u32,
    burst: u32,
}

impl RateLimitLayer {
    #[must_use]
    pub const fn new(qps: u32, burst: u32) -> Self {
        Self { qps, burst }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            bucket: TokenBucket::new(self.qps, self.burst, Instant::now()),
            wait: None,
            has_token: false,
        }
    }
}

/// A service that is ready only when its [`TokenBucket`] gives a token; each call spends it.
pub struct RateLimit<S> {
    inner: S,
    bucket: TokenBucket,
    /// Waiting for the next token.
    wait: Option<Pin<Box<Sleep>>>,
    /// A token taken by `poll_ready` for the next call.
    has_token: bool,
}

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.has_token {
            if let Some(wait) = self.wait.as_mut() {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
            match self.bucket.try_take(Instant::now()) {
                Ok(()) => self.has_token = true,
                Err(at) => self.wait = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.has_token = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::future::{Pending, Ready, pending, ready};
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn a_full_bucket_gives_its_burst_then_one_token_per_interval() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(5, 3, start);
        for _ in 0..3 {
            assert_eq!(bucket.try_take(start), Ok(()));
        }
        let next = start + Duration::from_millis(200);
        assert_eq!(bucket.try_take(start), Err(next));
        assert_eq!(bucket.try_take(next - Duration::from_nanos(1)), Err(next));
        assert_eq!(bucket.try_take(next), Ok(()));
        assert_eq!(
            bucket.try_take(next),
            Err(next + Duration::from_millis(200))
        );
        // Idle, it fills up to its burst and no further.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.try_take(later), Ok(()));
        }
        assert_eq!(
            bucket.try_take(later),
            Err(later + Duration::from_millis(200))
        );
    }

    /// A service that records when each request reached it; its responses are `ready` or
    /// never come (a watch that stays open).
    #[derive(Clone, Default)]
    struct Recorder {
        calls: Arc<Mutex<Vec<(u32, Duration)>>>,
        start: Option<Instant>,
    }

    impl Service<u32> for Recorder {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = futures::future::Either<
            Ready<Result<(), Self::Error>>,
            Pending<Result<(), Self::Error>>,
        >;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: u32) -> Self::Future {
            let at = self.start.expect("start").elapsed();
            self.calls.lock().expect("lock").push((request, at));
            // Request 0 is a watch: its response streams for as long as the test runs.
            if request == 0 {
                futures::future::Either::Right(pending())
            } else {
                futures::future::Either::Left(ready(Ok(())))
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_past_the_burst_wait_for_their_token_and_a_watch_is_one_request() {
        let start = Instant::now();
        let inner = Recorder {
            start: Some(start),
            ..Recorder::default()
        };
        let calls = Arc::clone(&inner.calls);
        // As kube's client's buffer drives its stack: ready, call, next; responses are
        // awaited elsewhere (request 0's never ends).
        let mut service = RateLimitLayer::new(10, 4).layer(inner);
        let mut responses = Vec::new();
        for request in 0..8 {
            futures::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .expect("ready");
            responses.push(service.call(request));
        }
        drop(responses);
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            *calls.lock().expect("lock"),
            [
                (0, ms(0)),
                (1, ms(0)),
                (2, ms(0)),
                (3, ms(0)),
                (4, ms(100)),
                (5, ms(200)),
                (6, ms(300)),
                (7, ms(400)),
            ],
            "a burst of 4 (the open watch among them), then 10 a second"
        );
    }
}
