//! Live sessions run on the monotonic clock (SPEC.md §1.3): a step of the
//! wall clock neither ends them early nor extends them.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{peripheral_full, run_link_owned, setup, wait_for};
use vouch_gateway::clock::TokioClock;
use vouch_gateway::driver::{sweeper, Context};
use vouch_gateway::metrics::Metrics;
use vouch_gateway::sessions::SessionTable;
use vouch_gateway::transport::memory::pair;
use vouch_gateway::transport::Link;
use vouch_proto::session::{CloseReason, Inbound};
use vouch_proto::wire::Scope;
use vouch_proto::Timestamp;

const HOUR_MS: i64 = 3_600_000;

/// Lets every task run until all wait again, without reaching the next
/// sweep (paused time moves on only once every task is idle).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(start_paused = true)]
async fn a_wall_clock_step_neither_ends_a_live_session_early_nor_extends_it() {
    let s = setup(Scope::TELEMETRY);
    let clock = TokioClock::new();
    let ctx = Arc::new(Context {
        config: s.ctx.config,
        backend: s.backend.clone(),
        clock: clock.clone(),
        table: SessionTable::new(100),
        metrics: Arc::new(Metrics::new().unwrap()),
        // Longer than the session: only its lifetime may end it.
        idle_timeout: Duration::from_secs(86_400),
        reports: Default::default(),
    });
    tokio::spawn(sweeper(
        ctx.clone(),
        Duration::from_secs(1),
        s.shutdown.clone(),
    ));
    let (mut p_link, g_link) = pair(247, "p", "g");
    let d = tokio::spawn(run_link_owned(ctx.clone(), g_link, 1, s.shutdown.clone()));
    let mut est = peripheral_full(&s, &mut p_link, 2).await.unwrap();
    wait_for("the session", || ctx.table.sessions().len() == 1).await;
    let info = ctx.table.sessions().list().remove(0);
    // The fake backend grants session_s = 3600.
    assert_eq!(
        info.expires_at.as_millis() - info.since.as_millis(),
        3_600_000
    );

    // NTP steps the wall clock two hours ahead (a Pi that booted with an old
    // time): the session goes on.
    clock.step_wall(2 * HOUR_MS);
    tokio::time::advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(
        ctx.table.sessions().len(),
        1,
        "a forward step ended the session early"
    );

    // Then four hours back: the session still ends on time, not later.
    clock.step_wall(-4 * HOUR_MS);
    let left = info.expires_at.as_millis() - clock_now(&ctx);
    tokio::time::advance(Duration::from_millis(left - 2_000)).await;
    settle().await;
    assert_eq!(ctx.table.sessions().len(), 1, "ended before its lifetime");
    tokio::time::advance(Duration::from_secs(3)).await;
    let msg = tokio::time::timeout(Duration::from_secs(1), p_link.recv())
        .await
        .expect("closed at the end of its lifetime")
        .unwrap()
        .unwrap();
    let mut out = [0u8; 64];
    assert_eq!(
        est.session.open(Timestamp(0), &msg, &mut out).unwrap(),
        Inbound::Close(CloseReason::EXPIRED)
    );
    d.await.unwrap();
    assert_eq!(ctx.table.sessions().len(), 0);
}

fn clock_now<B, C: vouch_gateway::clock::Clock>(ctx: &Context<B, C>) -> u64 {
    ctx.clock.now().as_millis()
}
