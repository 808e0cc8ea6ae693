//! Which backend instance a request goes to: several URLs of one backend
//! deployment (instances sharing one PostgreSQL), each with its own circuit
//! breaker and its own health, and the order this gateway prefers them in.
//!
//! The policy (gateway/README.md, "Several backend instances"): each gateway
//! shuffles the URLs once, at start, into its own order of preference, and
//! sends every request to the first instance in that order that is up. An
//! instance that fails to answer (connection refused, timeout, TLS failure,
//! 5xx) is down at once: the next request goes to the next instance in the
//! order, and a prober asks the down instance's `/readyz` on a jittered,
//! growing schedule ([`crate::retry::Retry`]) until it answers; then it is
//! up again and, being earlier in the order, gets this gateway's requests
//! back. A refusal (4xx) is an answer: the instance is up. Gateways of a
//! fleet pick their orders independently, so the load of the fleet spreads
//! over the instances, and the load of a failed instance over the others.
//!
//! With one URL nothing changes from a single backend: its breaker opens
//! after repeated failures and requests fail fast until its cooldown ends.
//! With several, requests fail fast only when every instance's breaker is
//! open.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::BackendError;
use crate::metrics::Metrics;
use crate::retry::Retry;

/// The first wait before a down instance is probed again; the waits double
/// (with jitter) up to [`PROBE_MAX`].
pub(crate) const PROBE_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between two probes of a down instance.
pub(crate) const PROBE_MAX: Duration = Duration::from_secs(15);

/// Counts consecutive failures of one instance and, past a threshold, makes
/// its requests fail fast for a cooldown (then one request tries again).
pub(crate) struct Breaker {
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    threshold: u32,
    cooldown: Duration,
    epoch: Instant,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            threshold: threshold.max(1),
            cooldown,
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn is_open(&self) -> bool {
        self.now_ms() < self.open_until_ms.load(Ordering::Relaxed)
    }

    /// A probe found the instance answering: its requests may go to it
    /// again at once (the circuit closes), but the count of failures stays,
    /// so that an instance whose probe answers and whose requests fail
    /// opens the circuit again at its next failure.
    fn close(&self) {
        self.open_until_ms.store(0, Ordering::Relaxed);
    }

    fn record(&self, url: &str, ok: bool) {
        if ok {
            if self.failures.swap(0, Ordering::Relaxed) >= self.threshold {
                tracing::info!(backend = url, "backend reachable again: circuit closed");
            }
            return;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.threshold {
            let until = self.now_ms() + self.cooldown.as_millis() as u64;
            self.open_until_ms.store(until, Ordering::Relaxed);
            if n == self.threshold {
                tracing::warn!(backend = url, failures = n, cooldown_ms = self.cooldown.as_millis() as u64,
                    "backend unreachable: circuit open, its requests fail fast; resumptions keep working");
            }
        }
    }
}

/// One backend instance.
struct Instance {
    url: String,
    breaker: Breaker,
    health: Mutex<Health>,
    /// Whether it is up, for requests waiting on it to learn at once that
    /// it went down ([`Instances::went_down`]).
    up_signal: tokio::sync::watch::Sender<bool>,
}

/// Whether an instance answers, and when to probe it if it does not.
struct Health {
    up: bool,
    /// When a down instance is probed next.
    probe_at: Instant,
    /// The schedule of its probes.
    retry: Retry,
}

/// The backend instances of one client, in this gateway's order of
/// preference.
pub(crate) struct Instances {
    /// In the order of preference (shuffled once, at start).
    all: Vec<Instance>,
    /// Wakes the prober when an instance goes down.
    pub(crate) wake: Arc<Notify>,
    metrics: Option<Arc<Metrics>>,
}

impl Instances {
    /// `urls` (at least one; trailing slashes dropped) in the order given,
    /// or shuffled when `shuffle`.
    pub(crate) fn new(
        urls: &[String],
        shuffle: bool,
        breaker_threshold: u32,
        breaker_cooldown: Duration,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, BackendError> {
        if urls.is_empty() {
            return Err(BackendError::Config("no backend URL".into()));
        }
        let mut order: Vec<&String> = urls.iter().collect();
        if shuffle {
            shuffle_in_place(&mut order);
        }
        let all: Vec<Instance> = order
            .into_iter()
            .map(|url| Instance {
                url: url.trim_end_matches('/').to_owned(),
                breaker: Breaker::new(breaker_threshold, breaker_cooldown),
                health: Mutex::new(Health {
                    up: true,
                    probe_at: Instant::now(),
                    retry: Retry::new(PROBE_FIRST, PROBE_MAX),
                }),
                up_signal: tokio::sync::watch::Sender::new(true),
            })
            .collect();
        if let Some(m) = &metrics {
            for i in &all {
                m.backend_instance_up(&i.url, true);
            }
        }
        Ok(Self {
            all,
            wake: Arc::new(Notify::new()),
            metrics,
        })
    }

    /// How many instances there are.
    pub(crate) fn len(&self) -> usize {
        self.all.len()
    }

    /// The base URL of instance `i`.
    pub(crate) fn url(&self, i: usize) -> &str {
        &self.all[i].url
    }

    fn health(&self, i: usize) -> std::sync::MutexGuard<'_, Health> {
        self.all[i]
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether instance `i` is up (answered its last request or probe).
    pub(crate) fn is_up(&self, i: usize) -> bool {
        self.health(i).up
    }

    /// Resolves when instance `i` goes down (at once if it is down now): a
    /// repeatable request waiting on it (a long-poll of the feed) then moves
    /// to the next instance instead of waiting out its own timeout.
    pub(crate) fn went_down(
        &self,
        i: usize,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.all[i].up_signal.subscribe();
        async move {
            let _ = rx.wait_for(|up| !*up).await;
        }
    }

    /// The instance the next request goes to, leaving out those in `tried`:
    /// the first in the order of preference that is up and whose breaker is
    /// closed; failing that, the first whose breaker is closed (with no
    /// instance known up, a request is how one is found again). `None`:
    /// every breaker is open, fail fast.
    pub(crate) fn pick(&self, tried: &[usize]) -> Option<usize> {
        let candidates = || {
            (0..self.all.len()).filter(|i| !tried.contains(i) && !self.all[*i].breaker.is_open())
        };
        candidates()
            .find(|i| self.is_up(*i))
            .or_else(|| candidates().next())
    }

    /// The URL the next request goes to, if any instance may be asked.
    pub(crate) fn in_use(&self) -> Option<&str> {
        self.pick(&[]).map(|i| self.url(i))
    }

    /// Instance `i` answered a request (a success or a refusal): it is up,
    /// its probe schedule and its breaker start over.
    pub(crate) fn answered(&self, i: usize) {
        self.all[i].breaker.record(&self.all[i].url, true);
        self.mark_up(i, true);
    }

    /// A probe (`GET /readyz`) of down instance `i` answered: it is up and
    /// its requests go to it again, but its probe schedule and its
    /// breaker's count of failures stay where they are until a request
    /// succeeds. An instance whose `/readyz` answers while its requests fail
    /// is then probed ever less often instead of every quarter second.
    pub(crate) fn probe_answered(&self, i: usize) {
        self.all[i].breaker.close();
        self.mark_up(i, false);
    }

    fn mark_up(&self, i: usize, request_succeeded: bool) {
        let came_back = {
            let mut h = self.health(i);
            let was_down = !h.up;
            h.up = true;
            self.all[i].up_signal.send_replace(true);
            if request_succeeded {
                h.retry.succeeded();
            }
            // The gauge under the same lock as the state, so that the two
            // never end apart when requests and probes race.
            if was_down {
                if let Some(m) = &self.metrics {
                    m.backend_instance_up(&self.all[i].url, true);
                }
            }
            was_down
        };
        if came_back {
            // Earlier in the order than every instance that is up: requests
            // come back to it.
            let preferred = (0..i).all(|j| !self.is_up(j));
            tracing::info!(
                backend = self.url(i),
                preferred,
                "backend instance answers again{}",
                if preferred && self.len() > 1 {
                    ": requests return to it"
                } else {
                    ""
                }
            );
        }
    }

    /// Instance `i` did not answer (`error`): it is down until a probe or a
    /// request finds it answering again.
    pub(crate) fn failed(&self, i: usize, error: &BackendError) {
        self.all[i].breaker.record(&self.all[i].url, false);
        let went_down = {
            let mut h = self.health(i);
            let was_up = h.up;
            h.up = false;
            self.all[i].up_signal.send_replace(false);
            if was_up {
                let wait = h.retry.next_delay();
                h.probe_at = Instant::now() + wait;
                if let Some(m) = &self.metrics {
                    m.backend_instance_up(&self.all[i].url, false);
                }
            }
            was_up
        };
        if !went_down {
            return;
        }
        if self.len() > 1 {
            if let Some(m) = &self.metrics {
                m.backend_failover();
            }
            match (0..self.len()).find(|j| *j != i && self.is_up(*j)) {
                Some(next) => {
                    tracing::warn!(backend = self.url(i), error = %error, next = self.url(next),
                    "backend instance stopped answering: failing over")
                }
                None => tracing::warn!(backend = self.url(i), error = %error,
                    "backend instance stopped answering, and no other instance is known to answer"),
            }
            self.wake.notify_one();
        }
    }

    /// The down instances whose probe is due now, and when the next one
    /// after them is due (`None`: no instance is down).
    pub(crate) fn due(&self, now: Instant) -> (Vec<usize>, Option<Instant>) {
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for i in 0..self.len() {
            let h = self.health(i);
            if h.up {
                continue;
            }
            if h.probe_at <= now {
                due.push(i);
            } else {
                next = Some(next.map_or(h.probe_at, |n| n.min(h.probe_at)));
            }
        }
        (due, next)
    }

    /// When the next probe of a down instance is due (`None`: none is down).
    pub(crate) fn next_probe_at(&self) -> Option<Instant> {
        (0..self.len())
            .filter_map(|i| {
                let h = self.health(i);
                (!h.up).then_some(h.probe_at)
            })
            .min()
    }

    /// A probe of down instance `i` failed: the next one waits longer.
    pub(crate) fn probe_failed(&self, i: usize) {
        let mut h = self.health(i);
        if !h.up {
            let wait = h.retry.next_delay();
            h.probe_at = Instant::now() + wait;
        }
    }
}

/// Fisher–Yates with the operating system's randomness; left as it is if
/// that fails (the order given is a valid order, only not a spread one).
fn shuffle_in_place<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let Ok(r) = getrandom::u32() else {
            return;
        };
        let j = (r as usize) % (i + 1);
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("https://b{i}.example")).collect()
    }

    fn down() -> BackendError {
        BackendError::ConnectionRefused("x".into())
    }

    #[test]
    fn an_instance_its_probe_finds_answering_gets_the_requests_back_at_once() {
        let s = Instances::new(&urls(2), false, 3, Duration::from_secs(5), None).unwrap();
        for _ in 0..3 {
            s.failed(0, &down());
        }
        assert_eq!(s.pick(&[]), Some(1), "its circuit is open");
        s.probe_answered(0);
        assert_eq!(s.pick(&[]), Some(0));
        // The count of failures stayed: one more failure opens it again.
        s.failed(0, &down());
        assert_eq!(s.pick(&[]), Some(1));
    }

    #[test]
    fn the_up_gauge_ends_where_the_state_ends() {
        for _ in 0..100 {
            let m = Arc::new(Metrics::new().unwrap());
            let s = Arc::new(
                Instances::new(
                    &urls(2),
                    false,
                    u32::MAX,
                    Duration::from_secs(5),
                    Some(m.clone()),
                )
                .unwrap(),
            );
            let (s1, s2) = (s.clone(), s.clone());
            let t1 = std::thread::spawn(move || {
                for _ in 0..200 {
                    s1.failed(0, &down());
                    s1.answered(0);
                    s1.failed(0, &down());
                }
            });
            let t2 = std::thread::spawn(move || {
                for _ in 0..200 {
                    s2.answered(0);
                }
            });
            t1.join().unwrap();
            t2.join().unwrap();
            let g: i64 = m
                .render()
                .lines()
                .find(|l| l.contains("backend_instance_up{") && l.contains("b0.example"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap();
            assert_eq!(g, i64::from(s.is_up(0)));
        }
    }

    #[test]
    fn requests_fail_over_in_order_and_return_to_an_instance_that_answers_again() {
        let s = Instances::new(&urls(3), false, 3, Duration::from_secs(5), None).unwrap();
        assert_eq!(s.pick(&[]), Some(0));
        s.failed(0, &down());
        assert_eq!(s.pick(&[]), Some(1), "the next one up");
        assert_eq!(s.pick(&[1]), Some(2), "not one tried in this request");
        s.failed(1, &down());
        assert_eq!(s.pick(&[]), Some(2));
        // A down instance is probed after a delay, not at once.
        let (due, next) = s.due(Instant::now());
        assert!(due.is_empty() && next.is_some());
        let (due, _) = s.due(Instant::now() + PROBE_MAX * 2);
        assert_eq!(due, vec![0, 1]);
        s.answered(0);
        assert_eq!(s.pick(&[]), Some(0), "back to the preferred instance");
        assert_eq!(s.in_use(), Some("https://b0.example"));
    }

    #[test]
    fn with_no_instance_up_requests_still_go_until_every_breaker_is_open() {
        let s = Instances::new(&urls(2), false, 2, Duration::from_secs(60), None).unwrap();
        s.failed(0, &down());
        s.failed(1, &down());
        assert_eq!(
            s.pick(&[]),
            Some(0),
            "none up: the first whose breaker is closed"
        );
        s.failed(0, &down());
        assert_eq!(s.pick(&[]), Some(1), "0's breaker is open");
        s.failed(1, &down());
        assert_eq!(s.pick(&[]), None, "every breaker open: fail fast");
        // One URL: as a single backend always was.
        let one = Instances::new(&urls(1), true, 3, Duration::from_secs(60), None).unwrap();
        for _ in 0..2 {
            one.failed(0, &down());
            assert_eq!(one.pick(&[]), Some(0));
        }
        one.failed(0, &down());
        assert_eq!(one.pick(&[]), None);
    }

    #[test]
    fn gateways_spread_over_the_instances() {
        let mut first = [0usize; 4];
        for _ in 0..400 {
            let s = Instances::new(&urls(4), true, 3, Duration::from_secs(5), None).unwrap();
            let u = s.url(0).to_owned();
            first[urls(4).iter().position(|x| *x == u).unwrap()] += 1;
        }
        assert!(first.iter().all(|n| *n > 50), "{first:?}");
        assert!(Instances::new(&[], true, 3, Duration::from_secs(5), None).is_err());
    }
}
