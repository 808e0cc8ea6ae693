//! What the gateway keeps across restarts (`[state] dir`): tickets survive a
//! restart so devices resume without the backend; a revocation made while
//! the gateway was down still takes effect; damaged files are skipped; files
//! and directories are private.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::setup_anchors;
use common::{context, drive_peripheral, peripheral_full, run_link_owned, setup, wait_for};
use common::{Capture, Setup, TempDir};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vouch_gateway::backend_client::BackendError;
use vouch_gateway::clock::{Clock, TokioClock, WallTime};
use vouch_gateway::driver::{Context, Outcome};
use vouch_gateway::sessions::SessionTable;
use vouch_gateway::state::{StateBinding, StateDir, StateError, CURSOR_FILE, TICKETS_DIR};
use vouch_gateway::transport::memory::pair;
use vouch_gateway::transport::Link;
use vouch_proto::handshake::peripheral::{PeripheralConfig, PeripheralHandshake, PeripheralTicket};
use vouch_proto::testing::rng;
use vouch_proto::wire::backend::{ErrorCode, FeedBatch, FeedChange, FeedEvent};
use vouch_proto::wire::Scope;
use vouch_proto::{AlertCode, Error as ProtoError, Timestamp};

type Ctx = Arc<Context<Arc<common::FakeBackend>, TokioClock>>;

fn binding(s: &Setup) -> StateBinding {
    StateBinding {
        gateway_key: s.ctx.config.gateway_key,
        backend_url: "https://backend.test:8443".into(),
    }
}

/// One run of the gateway on a state directory: its table, context and
/// revocation feed.
struct Run {
    table: Arc<SessionTable>,
    ctx: Ctx,
    stop: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
    feed: JoinHandle<()>,
}

impl Run {
    /// Starts the gateway on `dir` with the clock at `clock`.
    fn start(s: &Setup, dir: &StateDir, clock: TokioClock) -> Run {
        let table = SessionTable::open(100, dir, &binding(s), Arc::new(clock.clone()))
            .expect("open the state");
        Self::start_with(s, table, clock)
    }

    fn start_with(s: &Setup, table: Arc<SessionTable>, clock: TokioClock) -> Run {
        let ctx = context(&s.backend, s.ctx.config, table.clone(), clock);
        let (stop, shutdown) = watch::channel(false);
        let feed = tokio::spawn(vouch_gateway::revocation::follow(
            s.backend.clone(),
            table.clone(),
            ctx.config.gateway_key,
            ctx.metrics.clone(),
            shutdown.clone(),
        ));
        Run {
            table,
            ctx,
            stop,
            shutdown,
            feed,
        }
    }

    /// Stops it like the daemon does: tasks end, the last writes are flushed.
    /// Returns the wall clock's time, for the next run's clock to go on from.
    async fn stop(self) -> WallTime {
        let _ = self.stop.send(true);
        let _ = self.feed.await;
        self.table.tickets().flush().await;
        self.ctx.clock.wall()
    }
}

/// A clock whose wall time is `wall`, for a table opened without a run.
fn clock_at(wall: WallTime) -> Arc<TokioClock> {
    Arc::new(TokioClock::with_wall(wall))
}

/// Stores a ticket of another peripheral (number `n`) in `run`'s table.
fn store_other(run: &Run, n: u8) {
    let key = vouch_proto::keys::IdentityKey::generate(&mut rng(300 + u64::from(n)));
    run.table
        .store_ticket(vouch_proto::handshake::gateway::GatewayTicket::from_parts(
            vouch_proto::wire::ResumptionId([n; 16]),
            [n; 32],
            vouch_proto::wire::backend::PeripheralInfo {
                id: vouch_proto::keys::PeripheralId::derive(&key.public_key()),
                public_key: key.public_key(),
                group: None,
                attributes: vec![],
                scope: Scope::TELEMETRY,
            },
            vouch_proto::wire::Lifetimes {
                session_s: 60,
                resumption_s: 3600,
            },
            Timestamp(3_600_000),
        ));
}

/// A full handshake through `run`'s gateway; returns the peripheral's ticket
/// once the session has ended again.
async fn full_handshake(s: &Setup, run: &Run, seed: u64) -> PeripheralTicket {
    let before = run.table.tickets().len();
    let (mut p_link, g_link) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(
        run.ctx.clone(),
        g_link,
        seed,
        run.shutdown.clone(),
    ));
    let est = peripheral_full(s, &mut p_link, seed + 1000).await.unwrap();
    wait_for("the ticket", || run.table.tickets().len() == before + 1).await;
    drop(p_link);
    assert!(matches!(d.await.unwrap(), Outcome::SessionEnded { .. }));
    // The peripheral keeps its ticket (its flash survives reboots).
    let bytes = postcard::to_allocvec(&est.ticket).unwrap();
    postcard::from_bytes(&bytes).unwrap()
}

/// Sends a ResumeHello for `ticket`; returns the machine and the gateway's answer.
async fn resume(
    run: &Run,
    ticket: &PeripheralTicket,
    seed: u64,
) -> (PeripheralHandshake, Vec<u8>, JoinHandle<Outcome>) {
    let bytes = postcard::to_allocvec(ticket).unwrap();
    let ticket: PeripheralTicket = postcard::from_bytes(&bytes).unwrap();
    let (mut p_link, g_link) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(
        run.ctx.clone(),
        g_link,
        seed,
        run.shutdown.clone(),
    ));
    let mut p = PeripheralHandshake::resume(
        &PeripheralConfig::default(),
        &ticket,
        &setup_anchors(),
        Timestamp(0),
        &mut rng(seed),
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let n = p.poll_transmit(&mut buf).unwrap();
    p_link.send(&buf[..n]).await.unwrap();
    let answer = p_link.recv().await.unwrap().expect("the gateway answers");
    // Keep the link open until the caller is done with the driver.
    tokio::spawn(async move {
        let _ = p_link.recv().await;
    });
    (p, answer, d)
}

fn ticket_files(dir: &StateDir) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.tickets_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ticket"))
        .collect();
    v.sort();
    v
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn a_restarted_gateway_lets_a_device_resume_without_the_backend() {
    let tmp = TempDir::new("resume");
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let dir = StateDir::open(tmp.path()).unwrap();

    let first = Run::start(&s, &dir, TokioClock::new());
    let ticket = full_handshake(&s, &first, 1).await;
    assert_eq!(s.backend.requests.load(Ordering::SeqCst), 1);
    let now = first.stop().await;

    // A new process on the same directory (the clock goes on, as the wall clock does).
    let second = Run::start(&s, &dir, TokioClock::with_wall(now));
    let report = second.table.tickets().restore_report().unwrap().clone();
    assert_eq!(report.restored, 1, "{report:?}");
    assert_eq!(report.cursor, Some(0));

    let (mut p, answer, _d) = resume(&second, &ticket, 2).await;
    p.handle_input(Timestamp(0), &answer)
        .expect("a resume response, not an alert");
    assert!(p.into_established().unwrap().resumed);
    assert_eq!(
        s.backend.requests.load(Ordering::SeqCst),
        1,
        "no backend round trip for the resumption"
    );
}

/// The same, driven to the end: the resumed session is registered and the
/// restored ticket is replaced by the next one (on disk too).
#[tokio::test]
async fn a_resumption_after_a_restart_completes_and_replaces_the_ticket_on_disk() {
    let tmp = TempDir::new("resume-full");
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let dir = StateDir::open(tmp.path()).unwrap();
    let first = Run::start(&s, &dir, TokioClock::new());
    let ticket = full_handshake(&s, &first, 3).await;
    // The ticket's file is written in the background: wait for it.
    first.table.tickets().flush().await;
    let old_files = ticket_files(&dir);
    assert_eq!(old_files.len(), 1);
    let now = first.stop().await;

    let second = Run::start(&s, &dir, TokioClock::with_wall(now));
    let (mut p_link, g_link) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(
        second.ctx.clone(),
        g_link,
        4,
        second.shutdown.clone(),
    ));
    let mut p = PeripheralHandshake::resume(
        &PeripheralConfig::default(),
        &ticket,
        &setup_anchors(),
        Timestamp(0),
        &mut rng(5),
    )
    .unwrap();
    drive_peripheral(&mut p, &mut p_link).await.unwrap();
    assert!(p.into_established().unwrap().resumed);
    wait_for("the resumed session", || second.table.sessions().len() == 1).await;
    assert_eq!(second.ctx.metrics.handshakes("resumed"), 1);
    assert_eq!(s.backend.requests.load(Ordering::SeqCst), 1);
    drop(p_link);
    d.await.unwrap();
    second.table.tickets().flush().await;
    let new_files = ticket_files(&dir);
    assert_eq!(
        new_files.len(),
        1,
        "the used ticket is gone, the next one saved"
    );
    assert_ne!(new_files, old_files);
}

/// The security property: a peripheral revoked while the gateway was down
/// cannot resume from its persisted ticket, even if it asks before the
/// revocation feed has answered.
#[tokio::test(start_paused = true)]
async fn a_peripheral_revoked_while_the_gateway_was_down_cannot_resume() {
    let tmp = TempDir::new("revoked");
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let dir = StateDir::open(tmp.path()).unwrap();
    let first = Run::start(&s, &dir, TokioClock::new());
    let ticket = full_handshake(&s, &first, 6).await;
    let now = first.stop().await;
    assert_eq!(ticket_files(&dir).len(), 1);

    // While the gateway is down, the operator revokes the peripheral.
    s.backend.log.lock().unwrap().push(FeedEvent {
        seq: 1,
        at_ms: 0,
        change: FeedChange::PeripheralRevoked(s.id),
    });
    // The gateway restarts, and the peripheral presents its ticket before the
    // backend has answered the feed.
    s.backend.feed_now_open.send_replace(false);
    let second = Run::start(&s, &dir, TokioClock::with_wall(now));
    assert_eq!(second.table.tickets().restore_report().unwrap().restored, 1);
    assert!(second.table.tickets().awaits_feed());
    let (mut p, answer, d) = resume(&second, &ticket, 7).await;
    assert_eq!(
        p.handle_input(Timestamp(0), &answer),
        Err(ProtoError::Alert(AlertCode::ResumptionRejected)),
        "a restored ticket must not be used before the feed caught up"
    );
    assert!(matches!(d.await.unwrap(), Outcome::HandshakeFailed(_)));

    // The feed answers: the revocation is applied and the ticket is gone, on disk too.
    s.backend.feed_now_open.send_replace(true);
    wait_for("the revocation", || {
        second.table.tickets().is_empty() && !second.table.tickets().awaits_feed()
    })
    .await;
    assert!(second.table.feed().is_revoked(&s.id));
    second.table.tickets().flush().await;
    assert!(ticket_files(&dir).is_empty());
    // Asked again now, it is refused as an unknown ticket.
    let (mut p, answer, _d) = resume(&second, &ticket, 8).await;
    assert_eq!(
        p.handle_input(Timestamp(0), &answer),
        Err(ProtoError::Alert(AlertCode::ResumptionRejected))
    );
    assert_eq!(s.backend.requests.load(Ordering::SeqCst), 1);

    // And the cursor moved past the revocation: a third start restores nothing.
    let now = second.stop().await;
    let third = Run::start(&s, &dir, TokioClock::with_wall(now));
    let report = third.table.tickets().restore_report().unwrap();
    assert_eq!((report.restored, report.cursor), (0, Some(1)));
}

/// A restored ticket presented while the feed is catching up waits for it
/// (normally one round trip) rather than being refused at once.
#[tokio::test(start_paused = true)]
async fn a_restored_ticket_presented_during_the_catch_up_waits_for_it() {
    let tmp = TempDir::new("wait");
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let dir = StateDir::open(tmp.path()).unwrap();
    let first = Run::start(&s, &dir, TokioClock::new());
    let ticket = full_handshake(&s, &first, 9).await;
    let now = first.stop().await;

    s.backend.feed_now_open.send_replace(false);
    let second = Run::start(&s, &dir, TokioClock::with_wall(now));
    assert!(second.table.tickets().is_held_for_feed(&ticket.id));
    // The feed answers a second after the ResumeHello arrived (virtual time:
    // the paused clock moves on only once every task is idle, so the driver
    // is waiting by then); the handshake's deadline is 10 s.
    let backend = s.backend.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        backend.feed_now_open.send_replace(true);
    });
    let (mut p, answer, _d) = resume(&second, &ticket, 10).await;
    p.handle_input(Timestamp(0), &answer)
        .expect("resumed once the feed caught up");
    assert!(!second.table.tickets().is_held_for_feed(&ticket.id));
}

#[tokio::test]
async fn a_corrupt_ticket_file_is_skipped_with_a_log_and_the_rest_load() {
    let tmp = TempDir::new("corrupt");
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let dir = StateDir::open(tmp.path()).unwrap();
    let first = Run::start(&s, &dir, TokioClock::new());
    // One ticket per peripheral (SPEC.md §6.1): the fake backend vouches
    // for one device, so the two others are stored directly.
    full_handshake(&s, &first, 11).await;
    store_other(&first, 12);
    store_other(&first, 13);
    let now = first.stop().await;
    let files = ticket_files(&dir);
    assert_eq!(files.len(), 3);

    // One damaged in the middle, one from a future format version, one cut short.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&files[0], &bytes).unwrap();
    let mut bytes = std::fs::read(&files[1]).unwrap();
    bytes[0] = 2;
    std::fs::write(&files[1], &bytes).unwrap();
    let garbage = dir.tickets_dir().join("0000.ticket");
    std::fs::write(&garbage, b"\x01T").unwrap();

    let logs = Capture::default();
    let table = tracing::subscriber::with_default(logs.subscriber(), || {
        SessionTable::open(100, &dir, &binding(&s), clock_at(now))
            .expect("a damaged file is not fatal")
    });
    let report = table.tickets().restore_report().unwrap();
    assert_eq!(report.restored, 1, "{report:?}");
    assert_eq!(table.tickets().len(), 1);
    let skipped: Vec<_> = report.unreadable.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(
        skipped,
        vec![garbage.clone(), files[0].clone(), files[1].clone()]
    );
    let text = logs.text();
    for (file, why) in [
        (&files[0], "checksum mismatch"),
        (&files[1], "format version 2"),
        (&garbage, "truncated"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains("unreadable ticket file skipped")
                    && l.contains(&file.display().to_string())
                    && l.contains(why)),
            "no log line for {} ({why}) in:\n{text}",
            file.display()
        );
    }
    // Left in place for an operator to look at; never loaded.
    assert!(files[0].exists() && files[1].exists());
}

#[tokio::test]
async fn state_files_are_0600_and_directories_0700() {
    let tmp = TempDir::new("modes");
    let s = setup(Scope::TELEMETRY);
    // Missing, two levels deep: created 0700.
    let root = tmp.path().join("var/lib/vouch-gateway");
    let dir = StateDir::open(&root).unwrap();
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join(TICKETS_DIR)), 0o700);
    let first = Run::start(&s, &dir, TokioClock::new());
    full_handshake(&s, &first, 14).await;
    first.stop().await;
    let files = ticket_files(&dir);
    assert_eq!(files.len(), 1);
    assert_eq!(mode(&files[0]), 0o600);
    assert_eq!(mode(&root.join(CURSOR_FILE)), 0o600);

    // An existing directory others may read is used (its secrets are in the
    // 0700 tickets directory and 0600 files); one others may write is not:
    // they could plant tickets.
    let readable = tmp.path().join("readable");
    std::fs::create_dir(&readable).unwrap();
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o755)).unwrap();
    StateDir::open(&readable).unwrap();
    assert_eq!(mode(&readable.join(TICKETS_DIR)), 0o700);
    let writable = tmp.path().join("writable");
    std::fs::create_dir(&writable).unwrap();
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = StateDir::open(&writable).unwrap_err();
    assert!(matches!(e, StateError::TooOpen { mode: 0o777, .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&writable.display().to_string()) && msg.contains("chmod 700"),
        "{msg}"
    );
    // A tickets directory others may read is refused.
    std::fs::set_permissions(
        readable.join(TICKETS_DIR),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    assert!(matches!(
        StateDir::open(&readable),
        Err(StateError::TooOpen { .. })
    ));
    // Not a directory: the error names the path.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = StateDir::open(&file).unwrap_err();
    assert!(e.to_string().contains(&file.display().to_string()), "{e}");
}

/// Without a cursor for this gateway and backend, nothing says which
/// revocations the tickets missed: they are discarded.
#[tokio::test]
async fn tickets_without_a_usable_cursor_are_discarded() {
    let tmp = TempDir::new("cursor");
    let s = setup(Scope::TELEMETRY);
    let dir = StateDir::open(tmp.path()).unwrap();

    // The cursor file is lost.
    let first = Run::start(&s, &dir, TokioClock::new());
    full_handshake(&s, &first, 15).await;
    let now = first.stop().await;
    std::fs::remove_file(dir.cursor_path()).unwrap();
    let table = SessionTable::open(100, &dir, &binding(&s), clock_at(now)).unwrap();
    let report = table.tickets().restore_report().unwrap();
    assert_eq!((report.restored, report.discarded), (0, 1), "{report:?}");
    assert!(report
        .discarded_because
        .as_deref()
        .is_some_and(|w| w.contains("no feed cursor")));
    assert!(ticket_files(&dir).is_empty());
    assert!(
        dir.cursor_path().exists(),
        "a cursor from the start is saved"
    );
    drop(table);

    // The state was made for another backend.
    let first = Run::start(&s, &dir, TokioClock::with_wall(now));
    full_handshake(&s, &first, 16).await;
    let now = first.stop().await;
    let other = StateBinding {
        backend_url: "https://elsewhere.test".into(),
        ..binding(&s)
    };
    let table = SessionTable::open(100, &dir, &other, clock_at(now)).unwrap();
    assert_eq!(table.tickets().len(), 0);
    assert!(ticket_files(&dir).is_empty());
}

/// If the backend's log is behind the saved cursor (its database was
/// restored from a backup) or it refuses the feed, the restored tickets are
/// discarded.
#[tokio::test]
async fn restored_tickets_are_discarded_when_the_feed_cannot_resume() {
    let tmp = TempDir::new("rewound");
    let s = setup(Scope::TELEMETRY);
    let dir = StateDir::open(tmp.path()).unwrap();
    // An event moves the cursor to 5.
    s.backend.log.lock().unwrap().push(FeedEvent {
        seq: 5,
        at_ms: 0,
        change: FeedChange::PolicyChanged,
    });
    for answer in [
        Ok(FeedBatch {
            events: vec![],
            next: 2,
        }),
        Err(BackendError::Refused {
            status: 403,
            code: Some(ErrorCode::GatewayNotActive),
        }),
    ] {
        let first = Run::start(&s, &dir, TokioClock::new());
        full_handshake(&s, &first, 17).await;
        wait_for("the cursor", || {
            std::fs::read(dir.cursor_path()).is_ok_and(|b| b.len() > 2)
        })
        .await;
        let now = first.stop().await;
        let clock = TokioClock::with_wall(now);
        let second = SessionTable::open(100, &dir, &binding(&s), Arc::new(clock.clone())).unwrap();
        assert_eq!(second.tickets().restore_report().unwrap().cursor, Some(5));
        assert_eq!(second.tickets().len(), 1);
        *s.backend.feed_now_answer.lock().unwrap() = Some(answer);
        let run = Run::start_with(&s, second, clock);
        wait_for("the discard", || {
            run.table.tickets().is_empty() && !run.table.tickets().awaits_feed()
        })
        .await;
        run.stop().await;
        assert!(ticket_files(&dir).is_empty());
        *s.backend.feed_now_answer.lock().unwrap() = None;
    }
}

#[tokio::test]
async fn expired_tickets_and_tickets_from_a_clock_that_went_back_are_dropped_at_start() {
    let tmp = TempDir::new("expiry");
    let s = setup(Scope::TELEMETRY);
    let dir = StateDir::open(tmp.path()).unwrap();
    let first = Run::start(&s, &dir, TokioClock::new());
    full_handshake(&s, &first, 18).await;
    let now = first.stop().await;

    // The clock went back before the ticket was issued (a Pi without a
    // real-time clock, before NTP, fake-hwclock's time from an hour ago):
    // its expiry cannot be trusted.
    let behind = WallTime(now.as_millis() - 3_600_000);
    let table = SessionTable::open(100, &dir, &binding(&s), clock_at(behind)).unwrap();
    assert_eq!(table.tickets().restore_report().unwrap().clock_behind, 1);
    assert!(ticket_files(&dir).is_empty());
    drop(table);

    let first = Run::start(&s, &dir, TokioClock::with_wall(now));
    full_handshake(&s, &first, 19).await;
    let now = first.stop().await;
    // The vouch's resumption lifetime (a day) has passed.
    let later = WallTime(now.as_millis() + 86_400_000 + 1);
    let table = SessionTable::open(100, &dir, &binding(&s), clock_at(later)).unwrap();
    assert_eq!(table.tickets().restore_report().unwrap().expired, 1);
    assert_eq!(table.tickets().len(), 0);
    assert!(ticket_files(&dir).is_empty());
}

#[tokio::test]
async fn max_tickets_bounds_what_is_restored() {
    let tmp = TempDir::new("bound");
    let s = setup(Scope::TELEMETRY);
    let dir = StateDir::open(tmp.path()).unwrap();
    let first = Run::start(&s, &dir, TokioClock::new());
    full_handshake(&s, &first, 20).await;
    store_other(&first, 21);
    store_other(&first, 22);
    let now = first.stop().await;
    let table = SessionTable::open(2, &dir, &binding(&s), clock_at(now)).unwrap();
    assert_eq!(table.tickets().len(), 2);
    assert_eq!(table.tickets().restore_report().unwrap().over_limit, 1);
    assert_eq!(ticket_files(&dir).len(), 2);
}

const HOUR_MS: u64 = 3_600_000;

/// A gateway that boots with an old wall time (a Raspberry Pi has no
/// real-time clock; fake-hwclock restores the time it last saved) must not
/// use restored tickets: their expiry was saved on the wall clock, and a
/// clock behind would lengthen their lives. They wait until the backend's
/// authenticated time confirms the clock, and then expire by the confirmed
/// time.
#[tokio::test(start_paused = true)]
async fn a_gateway_whose_wall_clock_is_far_behind_the_backend_does_not_resume_restored_tickets() {
    let tmp = TempDir::new("clock-behind");
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let dir = StateDir::open(tmp.path()).unwrap();
    let first = Run::start(&s, &dir, TokioClock::new());
    let ticket = full_handshake(&s, &first, 30).await;
    let then = first.stop().await;

    // Ten hours pass with the gateway off; it boots with fake-hwclock's
    // time, a minute after the ticket was issued.
    s.backend.clock.step_wall(10 * HOUR_MS as i64);
    let clock = TokioClock::with_wall(WallTime(then.as_millis() + 60_000));
    let second = Run::start(&s, &dir, clock.clone());
    assert_eq!(second.table.tickets().restore_report().unwrap().restored, 1);
    let (mut p, answer, _d) = resume(&second, &ticket, 31).await;
    assert_eq!(
        p.handle_input(Timestamp(0), &answer),
        Err(ProtoError::Alert(AlertCode::ResumptionRejected)),
        "a restored ticket must not be used on an unconfirmed clock"
    );
    assert!(!second.table.tickets().wall_clock_confirmed());
    assert!(second.table.tickets().is_held_for_feed(&ticket.id));

    // NTP sets the clock; the next feed answer (any event) confirms it.
    clock.step_wall(10 * HOUR_MS as i64 - 60_000);
    let other = vouch_proto::keys::PeripheralId([9; 8]);
    s.feed_tx
        .send(FeedEvent {
            seq: 1,
            at_ms: 0,
            change: FeedChange::PeripheralReinstated(other),
        })
        .await
        .unwrap();
    wait_for("the confirmation", || {
        !second.table.tickets().is_held_for_feed(&ticket.id)
    })
    .await;
    assert!(second.table.tickets().wall_clock_confirmed());
    let (mut p, answer, _d) = resume(&second, &ticket, 32).await;
    p.handle_input(Timestamp(0), &answer)
        .expect("resumed once the clock is confirmed");

    // The ticket expires by the confirmed clock: fourteen hours are left of
    // its day, not the twenty-four the clock at boot made of it.
    tokio::time::advance(std::time::Duration::from_millis(14 * HOUR_MS - 120_000)).await;
    assert_eq!(second.table.tickets().expire(second.ctx.clock.now()), 0);
    tokio::time::advance(std::time::Duration::from_millis(120_000)).await;
    assert_eq!(second.table.tickets().expire(second.ctx.clock.now()), 1);
}

#[tokio::test(start_paused = true)]
async fn a_gateway_whose_wall_clock_is_within_tolerance_of_the_backend_resumes_restored_tickets() {
    let tmp = TempDir::new("clock-close");
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let dir = StateDir::open(tmp.path()).unwrap();
    let first = Run::start(&s, &dir, TokioClock::new());
    let ticket = full_handshake(&s, &first, 33).await;
    let then = first.stop().await;
    // The gateway's clock is 50 s behind the backend's (tolerance: 60 s).
    s.backend.clock.step_wall(50_000);
    let second = Run::start(&s, &dir, TokioClock::with_wall(then));
    let (mut p, answer, _d) = resume(&second, &ticket, 34).await;
    p.handle_input(Timestamp(0), &answer)
        .expect("resumed: the clock is within tolerance");
    assert!(second.table.tickets().wall_clock_confirmed());
}

/// A ticket's expiry is saved on the wall clock; while that clock disagrees
/// with the backend's, what would be saved is wrong, so nothing is: the
/// ticket is saved once the clock agrees.
#[tokio::test(start_paused = true)]
async fn tickets_are_saved_only_while_the_wall_clock_agrees_with_the_backend() {
    let tmp = TempDir::new("clock-save");
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let dir = StateDir::open(tmp.path()).unwrap();
    s.backend.clock.step_wall(-(24 * HOUR_MS as i64));
    let first = Run::start(&s, &dir, TokioClock::new());
    full_handshake(&s, &first, 35).await;
    first.table.tickets().flush().await;
    assert!(!first.table.tickets().wall_clock_confirmed());
    assert!(ticket_files(&dir).is_empty());
    s.backend.clock.step_wall(24 * HOUR_MS as i64);
    let other = vouch_proto::keys::PeripheralId([9; 8]);
    s.feed_tx
        .send(FeedEvent {
            seq: 1,
            at_ms: 0,
            change: FeedChange::PeripheralReinstated(other),
        })
        .await
        .unwrap();
    wait_for("the confirmation", || {
        first.table.tickets().wall_clock_confirmed()
    })
    .await;
    first.table.tickets().flush().await;
    assert_eq!(ticket_files(&dir).len(), 1);
}
