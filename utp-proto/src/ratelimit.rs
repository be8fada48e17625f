//! Upload and download rate limits: token buckets, per connection and shared
//! by all connections of an endpoint.
//!
//! Limits never drop packets. Upload limits hold new data back (like
//! pacing); download limits meter what the application may read, so the
//! receive buffer fills and the window we advertise shrinks until the peer
//! sends no faster than the limit.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A bucket holds this much time at its rate (at least [`MIN_BURST`]): enough
/// that a millisecond timer keeps up, small enough that the rate holds over
/// seconds.
const BURST_TIME: f64 = 0.05;
/// Smallest bucket, in bytes (a few packets).
const MIN_BURST: f64 = 16.0 * 1024.0;

/// A token bucket of `rate` bytes per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket for `rate` bytes per second (at least 1).
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (rate * BURST_TIME).max(MIN_BURST);
        Self {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// The rate in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        if self.last.is_none_or(|l| now > l) {
            self.last = Some(now);
        }
    }

    /// Whole bytes that may pass now.
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.max(0.0) as usize
    }

    /// How long until `bytes` may pass (`None`: now). A request bigger than
    /// the bucket waits only for a full bucket.
    pub fn delay(&mut self, now: Instant, bytes: usize) -> Option<Duration> {
        self.refill(now);
        let need = (bytes as f64).min(self.burst);
        if self.tokens >= need {
            return None;
        }
        let wait = Duration::from_secs_f64((need - self.tokens) / self.rate);
        // Never ask for a timer of "now": round up to a microsecond.
        Some(wait.max(Duration::from_micros(1)))
    }

    /// `bytes` passed (the bucket may go into debt, repaid by waiting).
    pub fn consume(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }
}

/// Limits shared by every connection of one endpoint (a BitTorrent client's
/// global upload and download caps). Cheap to clone: a handle.
#[derive(Debug, Clone, Default)]
pub struct SharedLimits {
    inner: Arc<Mutex<Limits>>,
}

#[derive(Debug, Default)]
struct Limits {
    up: Option<TokenBucket>,
    down: Option<TokenBucket>,
}

impl SharedLimits {
    fn lock(&self) -> MutexGuard<'_, Limits> {
        // A panic elsewhere can't leave a bucket half-updated in a way that
        // matters: keep going with its numbers.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the upload limit in bytes per second (`None`: unlimited).
    pub fn set_upload(&self, rate: Option<u64>) {
        self.lock().up = rate.map(TokenBucket::new);
    }

    /// Sets the download limit in bytes per second (`None`: unlimited).
    pub fn set_download(&self, rate: Option<u64>) {
        self.lock().down = rate.map(TokenBucket::new);
    }

    /// The upload limit, if any.
    pub fn upload(&self) -> Option<u64> {
        self.lock().up.as_ref().map(TokenBucket::rate)
    }

    /// The download limit, if any.
    pub fn download(&self) -> Option<u64> {
        self.lock().down.as_ref().map(TokenBucket::rate)
    }

    pub(crate) fn with_up<R>(&self, f: impl FnOnce(&mut TokenBucket) -> R) -> Option<R> {
        self.lock().up.as_mut().map(f)
    }

    pub(crate) fn with_down<R>(&self, f: impl FnOnce(&mut TokenBucket) -> R) -> Option<R> {
        self.lock().down.as_mut().map(f)
    }
}

/// A connection's own limits plus its endpoint's shared ones.
#[derive(Debug, Default)]
pub(crate) struct ConnLimits {
    pub(crate) shared: SharedLimits,
    pub(crate) up: Option<TokenBucket>,
    pub(crate) down: Option<TokenBucket>,
}

fn later(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

impl ConnLimits {
    /// How long until `bytes` of new data may be sent (`None`: now).
    pub(crate) fn upload_delay(&mut self, now: Instant, bytes: usize) -> Option<Duration> {
        let own = self.up.as_mut().and_then(|b| b.delay(now, bytes));
        let shared = self.shared.with_up(|b| b.delay(now, bytes)).flatten();
        later(own, shared)
    }

    pub(crate) fn on_upload(&mut self, bytes: usize) {
        if let Some(b) = &mut self.up {
            b.consume(bytes);
        }
        self.shared.with_up(|b| b.consume(bytes));
    }

    /// Bytes the application may read now (`usize::MAX`: unlimited).
    pub(crate) fn download_allowance(&mut self, now: Instant) -> usize {
        let own = self.down.as_mut().map(|b| b.available(now));
        let shared = self.shared.with_down(|b| b.available(now));
        own.unwrap_or(usize::MAX).min(shared.unwrap_or(usize::MAX))
    }

    /// How long until `bytes` may be read (at least a microsecond).
    pub(crate) fn download_delay(&mut self, now: Instant, bytes: usize) -> Duration {
        let own = self.down.as_mut().and_then(|b| b.delay(now, bytes));
        let shared = self.shared.with_down(|b| b.delay(now, bytes)).flatten();
        later(own, shared).unwrap_or(Duration::from_micros(1))
    }

    /// Whether any download limit applies.
    pub(crate) fn download_limited(&self) -> bool {
        self.down.is_some() || self.shared.download().is_some()
    }

    pub(crate) fn on_download(&mut self, bytes: usize) {
        if let Some(b) = &mut self.down {
            b.consume(bytes);
        }
        self.shared.with_down(|b| b.consume(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_holds_its_rate_over_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000);
        // Send 1000-byte units as fast as the bucket allows for 10 s.
        let mut now = t0;
        let mut sent = 0usize;
        while now < t0 + Duration::from_secs(10) {
            match b.delay(now, 1000) {
                None => {
                    b.consume(1000);
                    sent += 1000;
                }
                Some(w) => now += w,
            }
        }
        // 10 s at 1 MB/s plus the initial bucket (50 KB).
        let expect = 10_000_000 + 50_000;
        assert!(sent.abs_diff(expect) <= 2000, "{sent} vs {expect}");
    }

    #[test]
    fn shared_limit_is_shared() {
        let t0 = Instant::now();
        let shared = SharedLimits::default();
        shared.set_download(Some(100_000));
        let mut a = ConnLimits {
            shared: shared.clone(),
            ..Default::default()
        };
        let mut b = ConnLimits {
            shared: shared.clone(),
            ..Default::default()
        };
        let n = a.download_allowance(t0);
        assert_eq!(n, 16 * 1024, "a full bucket");
        a.on_download(n);
        let m = b.download_allowance(t0);
        assert_eq!(m, 0, "the other connection finds the shared bucket empty");
        assert!(b.download_delay(t0, 1000) >= Duration::from_millis(9));
        assert_eq!(shared.download(), Some(100_000));
        shared.set_download(None);
        assert_eq!(b.download_allowance(t0), usize::MAX);
    }
}
