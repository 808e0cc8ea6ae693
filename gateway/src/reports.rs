//! Session reports to the backend, coalesced (SPEC.md §10.5).
//!
//! Every attach and detach is a session event the backend must judge. Sent
//! one request each, a reconnect storm is one request per event: after an
//! outage of a site with thousands of devices, the reports fill the
//! gateway's request slots (and the backend's) and the backend judges a
//! report of one event at the cost of a whole request. Here the events that
//! arrive while earlier reports are in flight wait together and go in one
//! report, up to [`MAX_FEED_EVENTS`], in the order they were made: a lone
//! event goes at once, a storm costs one request per few hundred events.
//!
//! There is no task: whoever submits an event takes a report slot (at most
//! [`REPORT_SLOTS`] reports in flight, so that vouches keep the rest of the
//! client's slots) and sends what is waiting, its own event or others', until
//! its own has been answered. Every event therefore has an owner that sends
//! it or sees it sent. A report that fails fails for each of its events;
//! their owners retry as before, and their retries coalesce again.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::{oneshot, Semaphore};
use vouch_proto::wire::backend::{
    EventTimes, SessionEvent, SessionReport, SessionVerdict, MAX_FEED_EVENTS,
};
use vouch_proto::Timestamp;

use crate::backend_client::{BackendApi, BackendError};
use crate::clock::Clock;

/// How many reports of one gateway may be in flight at once: the others'
/// events wait and go together in the next. The HTTPS client has
/// [`MAX_IN_FLIGHT`](crate::backend_client::MAX_IN_FLIGHT) slots in all;
/// reports never take more than these, so vouches (a handshake waiting)
/// always find slots.
pub const REPORT_SLOTS: usize = 2;

/// When a session started and last heard its peripheral: the gateway's
/// monotonic clock in milliseconds, kept to its low 32 bits and compared
/// by wrapping subtraction (exact for ages under 49 days, and a session and
/// its reports are far shorter), so that a live session carries 8 bytes for
/// them: the per-session memory budget (DESIGN.md §6) has little room.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heard {
    started: u32,
    heard: u32,
}

impl Heard {
    /// `now`, as kept here.
    fn stamp(now: Timestamp) -> u32 {
        // Truncation intended: only differences are used.
        now.as_millis() as u32
    }

    /// A session established at `now`.
    pub(crate) fn started(now: Timestamp) -> Self {
        let t = Self::stamp(now);
        Self {
            started: t,
            heard: t,
        }
    }

    /// The peripheral was heard at `now`.
    pub(crate) fn heard(&mut self, now: Timestamp) {
        self.heard = Self::stamp(now);
    }

    /// The ages a report sent at `now` carries.
    fn ages(self, now: Timestamp) -> EventTimes {
        let now = Self::stamp(now);
        EventTimes {
            started_ms_ago: now.wrapping_sub(self.started),
            heard_ms_ago: now.wrapping_sub(self.heard),
        }
    }
}

/// An event waiting for a report, and where its verdict goes.
struct Waiting {
    event: SessionEvent,
    times: Heard,
    reply: oneshot::Sender<Result<SessionVerdict, BackendError>>,
}

/// The session events of one gateway waiting to be reported, and its
/// report slots.
pub struct Reports {
    waiting: Mutex<VecDeque<Waiting>>,
    slots: Semaphore,
}

impl Default for Reports {
    fn default() -> Self {
        Self {
            waiting: Mutex::new(VecDeque::new()),
            slots: Semaphore::new(REPORT_SLOTS),
        }
    }
}

impl Reports {
    /// Reports `event` (its session's `times`) to `backend`, together with
    /// whatever other events are waiting, and returns its verdict. One
    /// attempt: the caller decides whether to retry.
    pub(crate) async fn send<B: BackendApi, C: Clock>(
        &self,
        backend: &B,
        clock: &C,
        event: SessionEvent,
        times: Heard,
    ) -> Result<SessionVerdict, BackendError> {
        let (reply, mut answer) = oneshot::channel();
        self.lock().push_back(Waiting {
            event,
            times,
            reply,
        });
        loop {
            let Ok(_slot) = self.slots.acquire().await else {
                break;
            };
            // Answered while this one waited for a slot: someone else's
            // report carried it.
            if let Ok(verdict) = answer.try_recv() {
                return verdict;
            }
            let batch: Vec<Waiting> = {
                let mut waiting = self.lock();
                let n = waiting.len().min(MAX_FEED_EVENTS);
                waiting.drain(..n).collect()
            };
            if batch.is_empty() {
                // Ours is in a report in flight: wait for its answer.
                break;
            }
            send_batch(backend, clock, batch).await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(BackendError::Unavailable(
                "the report carrying this event was abandoned".into(),
            ))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
        // A panic elsewhere while holding the lock leaves a queue that is
        // still whole (pushes and drains only): keep using it.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Sends `batch` as one report and hands each event its verdict (or the
/// report's error).
async fn send_batch<B: BackendApi, C: Clock>(backend: &B, clock: &C, batch: Vec<Waiting>) {
    let now = clock.now();
    let (events, times): (Vec<_>, Vec<_>) = batch
        .iter()
        .map(|w| (w.event.clone(), w.times.ages(now)))
        .unzip();
    let n = events.len();
    let result = backend.report(SessionReport { events, times }).await;
    match result {
        Ok(answer) if answer.items.len() == n => {
            for (w, verdict) in batch.into_iter().zip(answer.items) {
                let _ = w.reply.send(Ok(verdict));
            }
        }
        Ok(answer) => {
            let e = BackendError::Malformed(format!(
                "{} verdicts for a report of {n} events",
                answer.items.len()
            ));
            for w in batch {
                let _ = w.reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for w in batch {
                let _ = w.reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::watch;
    use vouch_proto::keys::PeripheralId;
    use vouch_proto::wire::backend::{
        FeedBatch, SessionEventKind, SessionReportAnswer, VouchAnswer, VouchRequest,
    };

    use super::*;
    use crate::clock::TokioClock;

    /// What the fake backend does with a report.
    #[derive(Clone, Copy, PartialEq)]
    enum Answer {
        /// Refused for an odd first byte of the session id, else accepted.
        ByParity,
        /// Unavailable (a backend that cannot be reached).
        Down,
        /// One verdict too few.
        Short,
    }

    /// Records every report; holds each until `open` is `true`.
    struct Fake {
        reports: Mutex<Vec<SessionReport>>,
        open: watch::Sender<bool>,
        answer: Mutex<Answer>,
    }

    impl Fake {
        fn new(open: bool) -> Arc<Self> {
            Arc::new(Self {
                reports: Mutex::new(Vec::new()),
                open: watch::channel(open).0,
                answer: Mutex::new(Answer::ByParity),
            })
        }

        fn sent(&self) -> Vec<Vec<u8>> {
            let reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
            reports
                .iter()
                .map(|r| r.events.iter().map(|e| e.session_id[0]).collect())
                .collect()
        }
    }

    impl BackendApi for Fake {
        async fn vouch(&self, _: VouchRequest) -> Result<VouchAnswer, BackendError> {
            Err(BackendError::Unavailable("not in this test".into()))
        }

        async fn report(&self, report: SessionReport) -> Result<SessionReportAnswer, BackendError> {
            assert_eq!(
                report.events.len(),
                report.times.len(),
                "one times entry per event"
            );
            self.reports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(report.clone());
            let _ = self.open.subscribe().wait_for(|o| *o).await;
            let answer = *self.answer.lock().unwrap_or_else(|e| e.into_inner());
            let mut items: Vec<SessionVerdict> = report
                .events
                .iter()
                .map(|e| {
                    if e.session_id[0] % 2 == 1 {
                        SessionVerdict::Refused
                    } else {
                        SessionVerdict::Accepted
                    }
                })
                .collect();
            match answer {
                Answer::ByParity => {}
                Answer::Down => return Err(BackendError::Unavailable("refused".into())),
                Answer::Short => {
                    items.pop();
                }
            }
            Ok(SessionReportAnswer { items })
        }

        async fn feed(&self, _: u64) -> Result<FeedBatch, BackendError> {
            Err(BackendError::Unavailable("not in this test".into()))
        }
    }

    fn event(n: u8) -> SessionEvent {
        SessionEvent {
            peripheral: PeripheralId([n; 8]),
            kind: SessionEventKind::Attached,
            session_id: [n, 0, 0, 0, 0, 0, 0, 0],
        }
    }

    /// Submits event `n` on a task of its own; its verdict comes back.
    fn submit(reports: &Arc<Reports>, backend: &Arc<Fake>, clock: &TokioClock, n: u8) -> Submitted {
        let (reports, backend, clock) = (reports.clone(), backend.clone(), clock.clone());
        tokio::spawn(async move {
            let times = Heard::started(clock.now());
            reports.send(&backend, &clock, event(n), times).await
        })
    }

    async fn until(what: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !what() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("in time");
    }

    /// A fake backend that answers `answer`, holding its reports, and every
    /// report slot taken by a report of one event (events 0, 1, …).
    async fn every_slot_held(
        answer: Answer,
    ) -> (Arc<Reports>, Arc<Fake>, TokioClock, Vec<Submitted>) {
        let (reports, backend, clock) = (
            Arc::new(Reports::default()),
            Fake::new(false),
            TokioClock::new(),
        );
        *backend.answer.lock().unwrap_or_else(|e| e.into_inner()) = answer;
        let tasks: Vec<_> = (0..REPORT_SLOTS as u8)
            .map(|n| submit(&reports, &backend, &clock, n))
            .collect();
        until(|| backend.sent().len() == REPORT_SLOTS).await;
        (reports, backend, clock, tasks)
    }

    /// A submitted event's task: its verdict.
    type Submitted = tokio::task::JoinHandle<Result<SessionVerdict, BackendError>>;

    #[tokio::test]
    async fn events_waiting_behind_reports_in_flight_go_together_in_order() {
        let (reports, backend, clock, mut tasks) = every_slot_held(Answer::ByParity).await;
        // 300 more wait: more than one report holds.
        let more = 300u16;
        for n in 0..more {
            tasks.push(submit(
                &reports,
                &backend,
                &clock,
                (REPORT_SLOTS as u16 + n) as u8,
            ));
        }
        until(|| reports.lock().len() == usize::from(more)).await;
        backend.open.send_replace(true);
        let mut verdicts = Vec::new();
        for t in tasks {
            verdicts.push(t.await.expect("task").expect("reported"));
        }
        // Each caller got its own event's verdict.
        for (n, v) in verdicts.iter().enumerate() {
            let odd = (n as u8) % 2 == 1;
            assert_eq!(*v == SessionVerdict::Refused, odd, "event {n}: {v:?}");
        }
        // Two reports of one, then the 300 in two reports, in the order
        // they were made, none twice.
        let sent = backend.sent();
        let sizes: Vec<usize> = sent.iter().map(Vec::len).collect();
        assert_eq!(
            sizes[REPORT_SLOTS..],
            [MAX_FEED_EVENTS, usize::from(more) - MAX_FEED_EVENTS]
        );
        let mut head = sent[..REPORT_SLOTS].concat();
        head.sort_unstable();
        let expected: Vec<u8> = (0..REPORT_SLOTS as u16 + more).map(|n| n as u8).collect();
        assert_eq!(head, expected[..REPORT_SLOTS]);
        assert_eq!(sent[REPORT_SLOTS..].concat(), expected[REPORT_SLOTS..]);
    }

    #[tokio::test]
    async fn a_report_that_fails_fails_for_each_of_its_events() {
        let (reports, backend, clock, mut tasks) = every_slot_held(Answer::Down).await;
        for n in 0..10 {
            tasks.push(submit(&reports, &backend, &clock, 100 + n));
        }
        until(|| reports.lock().len() == 10).await;
        backend.open.send_replace(true);
        for t in tasks {
            let e = t.await.expect("task").expect_err("the backend is down");
            assert!(e.is_unavailable(), "{e}");
        }
        // A report that answers the wrong number of verdicts answers none.
        *backend.answer.lock().unwrap_or_else(|e| e.into_inner()) = Answer::Short;
        let e = submit(&reports, &backend, &clock, 7)
            .await
            .expect("task")
            .expect_err("one verdict short");
        assert!(matches!(e, BackendError::Malformed(_)), "{e}");
        assert_eq!(backend.sent().len(), REPORT_SLOTS + 2);
    }
}
