//! Upload and download rate limits: token buckets, per connection and shared
//! by all connections of an endpoint.
//!
//! Limits never drop packets. Upload limits hold new data back (like
//! pacing); download limits meter what the application may read, so the
//! receive buffer fills and the window we advertise shrinks until the peer
//! sends no faster than the limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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

    /// Changes the rate, keeping the tokens (up to the new bucket size).
    fn set_rate(&mut self, rate: f64) {
        self.rate = rate.max(1.0);
        self.burst = (self.rate * BURST_TIME).max(MIN_BURST);
        self.tokens = self.tokens.min(self.burst);
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
    inner: Arc<SharedInner>,
}

#[derive(Debug, Default)]
struct SharedInner {
    limits: Mutex<Limits>,
    /// Whether an upload / download limit is set: read on every packet and
    /// every read, so connections of an unlimited socket never take the lock.
    up_on: AtomicBool,
    down_on: AtomicBool,
}

#[derive(Debug, Default)]
struct Limits {
    up: Option<TokenBucket>,
    down: Option<TokenBucket>,
    /// Connections sending / reading under the shared limits lately: each
    /// gets an equal share, so the first one woken can't take it all.
    senders: Active,
    readers: Active,
    next_id: u64,
}

/// A connection that has not tried to use a shared limit for this long no
/// longer takes a share of it.
const IDLE: Duration = Duration::from_secs(1);

/// Connections that used a shared limit lately (id, last attempt).
#[derive(Debug, Default)]
struct Active {
    seen: HashMap<u64, Instant>,
    pruned: Option<Instant>,
}

impl Active {
    /// Registers `id` as active; returns how many are.
    fn count(&mut self, id: u64, now: Instant) -> usize {
        self.seen.insert(id, now);
        if self
            .pruned
            .is_none_or(|p| now.saturating_duration_since(p) >= IDLE)
        {
            self.seen
                .retain(|_, seen| now.saturating_duration_since(*seen) < IDLE);
            self.pruned = Some(now);
        }
        self.seen.len().max(1)
    }
}

impl SharedLimits {
    fn lock(&self) -> MutexGuard<'_, Limits> {
        // A panic elsewhere can't leave a bucket half-updated in a way that
        // matters: keep going with its numbers.
        self.inner.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the upload limit in bytes per second (`None`: unlimited).
    pub fn set_upload(&self, rate: Option<u64>) {
        let mut limits = self.lock();
        limits.up = rate.map(TokenBucket::new);
        self.inner.up_on.store(rate.is_some(), Ordering::Relaxed);
    }

    /// Sets the download limit in bytes per second (`None`: unlimited).
    pub fn set_download(&self, rate: Option<u64>) {
        let mut limits = self.lock();
        limits.down = rate.map(TokenBucket::new);
        self.inner.down_on.store(rate.is_some(), Ordering::Relaxed);
    }

    fn is_on(&self, upload: bool) -> bool {
        let flag = if upload {
            &self.inner.up_on
        } else {
            &self.inner.down_on
        };
        flag.load(Ordering::Relaxed)
    }

    /// The upload limit, if any.
    pub fn upload(&self) -> Option<u64> {
        self.lock().up.as_ref().map(TokenBucket::rate)
    }

    /// The download limit, if any.
    pub fn download(&self) -> Option<u64> {
        self.lock().down.as_ref().map(TokenBucket::rate)
    }
}

/// A connection's own limits plus its endpoint's shared ones.
#[derive(Debug, Default)]
pub(crate) struct ConnLimits {
    pub(crate) shared: SharedLimits,
    pub(crate) up: Option<TokenBucket>,
    pub(crate) down: Option<TokenBucket>,
    /// This connection's equal shares of the shared limits.
    fair_up: Option<TokenBucket>,
    fair_down: Option<TokenBucket>,
    /// Id among the shared limits' active connections.
    id: Option<u64>,
}

impl ConnLimits {
    /// Limits of a new connection: its own (from the config) and the
    /// endpoint's shared ones.
    pub(crate) fn new(shared: SharedLimits, up: Option<u64>, down: Option<u64>) -> Self {
        Self {
            shared,
            up: up.map(TokenBucket::new),
            down: down.map(TokenBucket::new),
            fair_up: None,
            fair_down: None,
            id: None,
        }
    }

    /// Moves this connection under another endpoint's shared limits.
    pub(crate) fn set_shared(&mut self, shared: SharedLimits) {
        self.leave();
        self.fair_up = None;
        self.fair_down = None;
        self.shared = shared;
    }

    fn leave(&mut self) {
        if let Some(id) = self.id.take() {
            let mut limits = self.shared.lock();
            limits.senders.seen.remove(&id);
            limits.readers.seen.remove(&id);
        }
    }

    /// Under the shared lock, once per call: keeps this connection's fair
    /// share of a shared limit up to date (the limit divided among the
    /// connections using it lately), then runs `f` on the shared bucket and
    /// the share. `None` when no shared limit is set (no lock taken).
    fn with_shared<R>(
        &mut self,
        now: Instant,
        upload: bool,
        f: impl FnOnce(&mut TokenBucket, &mut TokenBucket) -> R,
    ) -> Option<R> {
        if !self.shared.is_on(upload) {
            if upload {
                self.fair_up = None;
            } else {
                self.fair_down = None;
            }
            return None;
        }
        let mut guard = self.shared.lock();
        let limits = &mut *guard;
        let (bucket, active, fair) = if upload {
            (&mut limits.up, &mut limits.senders, &mut self.fair_up)
        } else {
            (&mut limits.down, &mut limits.readers, &mut self.fair_down)
        };
        let Some(bucket) = bucket.as_mut() else {
            *fair = None;
            return None;
        };
        let id = *self.id.get_or_insert_with(|| {
            limits.next_id += 1;
            limits.next_id
        });
        let share = bucket.rate / active.count(id, now) as f64;
        let fair = match fair {
            Some(b) => {
                b.set_rate(share);
                b
            }
            None => fair.insert(TokenBucket::new(share as u64)),
        };
        Some(f(bucket, fair))
    }
}

impl Drop for ConnLimits {
    fn drop(&mut self) {
        self.leave();
    }
}

impl ConnLimits {
    /// How long until `bytes` of new data may be sent (`None`: now).
    pub(crate) fn upload_delay(&mut self, now: Instant, bytes: usize) -> Option<Duration> {
        let own = self.up.as_mut().and_then(|b| b.delay(now, bytes));
        let shared = self.with_shared(now, true, |shared, fair| {
            shared.delay(now, bytes).max(fair.delay(now, bytes))
        });
        own.max(shared.flatten())
    }

    pub(crate) fn on_upload(&mut self, bytes: usize) {
        if let Some(b) = &mut self.up {
            b.consume(bytes);
        }
        self.consume_shared(true, bytes);
    }

    /// Bytes the application may read now (`usize::MAX`: unlimited).
    pub(crate) fn download_allowance(&mut self, now: Instant) -> usize {
        let own = self.down.as_mut().map(|b| b.available(now));
        let shared = self.with_shared(now, false, |shared, fair| {
            shared.available(now).min(fair.available(now))
        });
        own.into_iter().chain(shared).min().unwrap_or(usize::MAX)
    }

    /// How long until `bytes` may be read (at least a microsecond).
    pub(crate) fn download_delay(&mut self, now: Instant, bytes: usize) -> Duration {
        let own = self.down.as_mut().and_then(|b| b.delay(now, bytes));
        let shared = self.with_shared(now, false, |shared, fair| {
            shared.delay(now, bytes).max(fair.delay(now, bytes))
        });
        own.max(shared.flatten())
            .unwrap_or(Duration::from_micros(1))
    }

    /// `bytes` passed: charged to the shared bucket and this connection's
    /// share of it.
    fn consume_shared(&mut self, upload: bool, bytes: usize) {
        if !self.shared.is_on(upload) {
            return;
        }
        let mut limits = self.shared.lock();
        let (bucket, fair) = if upload {
            (&mut limits.up, &mut self.fair_up)
        } else {
            (&mut limits.down, &mut self.fair_down)
        };
        for b in [bucket, fair].into_iter().flatten() {
            b.consume(bytes);
        }
    }

    /// Whether any download limit applies.
    pub(crate) fn download_limited(&self) -> bool {
        self.down.is_some() || self.shared.is_on(false)
    }

    pub(crate) fn on_download(&mut self, bytes: usize) {
        if let Some(b) = &mut self.down {
            b.consume(bytes);
        }
        self.consume_shared(false, bytes);
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
        let mut a = ConnLimits::new(shared.clone(), None, None);
        let mut b = ConnLimits::new(shared.clone(), None, None);
        // Two readers: each may take its share of the shared bucket, and
        // the shared bucket bounds the sum.
        assert_eq!(a.download_allowance(t0), 16 * 1024);
        assert_eq!(b.download_allowance(t0), 16 * 1024);
        a.on_download(16 * 1024);
        assert_eq!(b.download_allowance(t0), 0, "the shared bucket is empty");
        assert!(b.download_delay(t0, 1000) >= Duration::from_millis(9));
        // Over a second, each gets half of the rate.
        let t1 = t0 + Duration::from_secs(1);
        let (mut got_a, mut got_b, mut t) = (0, 0, t0);
        while t < t1 {
            t += Duration::from_millis(1);
            for (c, got) in [(&mut a, &mut got_a), (&mut b, &mut got_b)] {
                let n = c.download_allowance(t);
                c.on_download(n);
                *got += n;
            }
        }
        assert!(got_a.abs_diff(got_b) < 20_000, "{got_a} vs {got_b}");
        assert_eq!(shared.download(), Some(100_000));
        shared.set_download(None);
        assert_eq!(b.download_allowance(t0), usize::MAX);
        drop(a);
        assert_eq!(
            shared.lock().readers.seen.len(),
            1,
            "a dropped reader leaves"
        );
    }
}
