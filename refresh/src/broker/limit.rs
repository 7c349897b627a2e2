//! The broker's rate limit: a token bucket over every request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `rate` requests a second, in bursts of up to `rate`; `rate` 0 is no limit.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: u32,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Requests that may pass now (fractions refill over time).
    tokens: f64,
    /// When `tokens` was last refilled.
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` requests a second.
    pub(crate) fn new(rate: u32) -> TokenBucket {
        TokenBucket {
            rate,
            state: Mutex::new(Bucket {
                tokens: f64::from(rate),
                refilled: Instant::now(),
            }),
        }
    }

    /// Takes one request's token at `now`, or says how long until one is there.
    pub(crate) fn take(&self, now: Instant) -> Result<(), Duration> {
        if self.rate == 0 {
            return Ok(());
        }
        let rate = f64::from(self.rate);
        let mut bucket = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.refilled = now.max(bucket.refilled);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_rate_passes_and_the_next_request_waits_for_a_refill() {
        let bucket = TokenBucket::new(4);
        let start = Instant::now();
        for n in 0..4 {
            assert!(
                bucket.take(start).is_ok(),
                "request {n} of a burst of 4 was refused"
            );
        }
        let wait = bucket
            .take(start)
            .expect_err("a fifth request in the same instant passed");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(250),
            "the wait for the next token is {wait:?}, not at most a quarter second"
        );
        assert!(
            bucket.take(start + Duration::from_millis(250)).is_ok(),
            "a request a quarter second later (one token refilled) was refused"
        );
        assert!(
            bucket.take(start + Duration::from_millis(250)).is_err(),
            "two requests passed on one refilled token"
        );
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let bucket = TokenBucket::new(0);
        let now = Instant::now();
        assert!(
            (0..1000).all(|_| bucket.take(now).is_ok()),
            "a bucket with rate 0 refused a request"
        );
    }
}
