//! The BLE central's logic against a fake radio of our own trait:
//! fragmentation at ATT MTU 23 and 247 through a real handshake, filtering of
//! advertisements, backoff after connection aborts, retried discovery,
//! timeouts on hung operations and the cap on concurrent links. What this
//! cannot show (that we drive BlueZ correctly) is the BLE VM test's job.

mod common;

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{setup, wait_for, Setup, TempDir};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use vouch_gateway::endpoint::{Gateway, SWEEP_EVERY};
use vouch_gateway::serve::ble::{serve_ble, serve_ble_with_memory, BleSettings};
use vouch_gateway::state::{KnownDevices, StateDir};
use vouch_gateway::transport::ble::{Advert, BleConnection, BleRadio, SERVICE_UUID};
use vouch_gateway::transport::{BleError, LinkError};
use vouch_proto::framing::{Fragmenter, Reassembler, ReassemblyLimits};
use vouch_proto::handshake::peripheral::{
    PeripheralConfig, PeripheralEstablished, PeripheralHandshake,
};
use vouch_proto::session::Inbound;
use vouch_proto::testing::rng;
use vouch_proto::wire::Scope;
use vouch_proto::Timestamp;

#[derive(Debug, Clone, Copy)]
enum Plan {
    Fail,
    Hang,
    Ok { setup_failures: u32 },
}

/// The peripheral's end of a fake GATT connection.
struct PeripheralEnd {
    from_gateway: mpsc::Receiver<Vec<u8>>,
    to_gateway: mpsc::Sender<Vec<u8>>,
    frag_len: usize,
    reassembler: Reassembler,
}

impl PeripheralEnd {
    async fn send(&mut self, msg: &[u8]) {
        let mut f = Fragmenter::new(msg, self.frag_len + 3).unwrap();
        let mut buf = [0u8; 512];
        while let Some(n) = f.next_into(&mut buf) {
            assert!(n <= self.frag_len);
            self.to_gateway.send(buf[..n].to_vec()).await.unwrap();
        }
    }
    async fn recv(&mut self) -> Vec<u8> {
        loop {
            let frag = self.from_gateway.recv().await.expect("gateway wrote");
            assert!(
                frag.len() <= self.frag_len,
                "gateway wrote {} bytes at fragment size {}",
                frag.len(),
                self.frag_len
            );
            if let Some(m) = self.reassembler.push(Timestamp(0), &frag).unwrap() {
                return m.to_vec();
            }
        }
    }
}

struct FakeConn {
    to_periph: mpsc::Sender<Vec<u8>>,
    from_periph: mpsc::Receiver<Vec<u8>>,
    frag_len: usize,
    setup_failures: u32,
}

impl BleConnection for FakeConn {
    async fn setup(&mut self) -> Result<(), LinkError> {
        if self.setup_failures > 0 {
            self.setup_failures -= 1;
            return Err(LinkError::Ble(BleError::Stack(
                "service discovery incomplete".into(),
            )));
        }
        Ok(())
    }
    fn fragment_len(&self) -> usize {
        self.frag_len
    }
    async fn write(&mut self, fragment: &[u8]) -> Result<(), LinkError> {
        self.to_periph
            .send(fragment.to_vec())
            .await
            .map_err(|_| LinkError::Ble(BleError::Stack("disconnected".into())))
    }
    async fn notification(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        Ok(self.from_periph.recv().await)
    }
    async fn disconnect(&mut self) {}
}

struct FakeRadio {
    adverts: Mutex<Option<mpsc::Receiver<Advert>>>,
    plans: Mutex<HashMap<String, VecDeque<Plan>>>,
    attempts: Mutex<Vec<(String, tokio::time::Instant)>>,
    cancelled: Mutex<Vec<String>>,
    connected: mpsc::Sender<(String, PeripheralEnd)>,
    frag_len: usize,
    /// How long every connect takes (BlueZ: about 10 s with discovery).
    connect_delay: Mutex<Duration>,
}

impl BleRadio for FakeRadio {
    type Conn = FakeConn;
    async fn scan(&self) -> Result<mpsc::Receiver<Advert>, LinkError> {
        self.adverts
            .lock()
            .unwrap()
            .take()
            .ok_or(LinkError::Ble(BleError::Stack(
                "scan already running".into(),
            )))
    }
    async fn connect(&self, device: &str) -> Result<FakeConn, LinkError> {
        self.attempts
            .lock()
            .unwrap()
            .push((device.to_string(), tokio::time::Instant::now()));
        let plan = self
            .plans
            .lock()
            .unwrap()
            .get_mut(device)
            .and_then(|p| p.pop_front())
            .unwrap_or(Plan::Ok { setup_failures: 0 });
        let delay = *self.connect_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        match plan {
            Plan::Fail => Err(LinkError::Ble(BleError::Stack(
                "le-connection-abort-by-local".into(),
            ))),
            Plan::Hang => std::future::pending().await,
            Plan::Ok { setup_failures } => {
                let (to_periph, from_gateway) = mpsc::channel(64);
                let (to_gateway, from_periph) = mpsc::channel(64);
                let end = PeripheralEnd {
                    from_gateway,
                    to_gateway,
                    frag_len: self.frag_len,
                    reassembler: Reassembler::new(ReassemblyLimits::default()),
                };
                let _ = self.connected.send((device.to_string(), end)).await;
                Ok(FakeConn {
                    to_periph,
                    from_periph,
                    frag_len: self.frag_len,
                    setup_failures,
                })
            }
        }
    }
    async fn cancel(&self, device: &str) {
        self.cancelled.lock().unwrap().push(device.to_string());
    }
}

struct Bench {
    s: Setup,
    radio: Arc<FakeRadio>,
    adverts: mpsc::Sender<Advert>,
    connected: mpsc::Receiver<(String, PeripheralEnd)>,
    central: JoinHandle<Result<(), LinkError>>,
}

fn bench(frag_len: usize, settings: BleSettings, plans: &[(&str, &[Plan])]) -> Bench {
    bench_with(frag_len, settings, plans, None)
}

/// A central on a fake radio; with `known`, the central that keeps its
/// memory of Vouch devices there.
fn bench_with(
    frag_len: usize,
    settings: BleSettings,
    plans: &[(&str, &[Plan])],
    known: Option<KnownDevices>,
) -> Bench {
    let s = setup(Scope::TELEMETRY.union(Scope::COMMAND));
    let (adverts, adverts_rx) = mpsc::channel(64);
    let (connected_tx, connected) = mpsc::channel(16);
    let radio = Arc::new(FakeRadio {
        adverts: Mutex::new(Some(adverts_rx)),
        plans: Mutex::new(
            plans
                .iter()
                .map(|(d, p)| (d.to_string(), p.iter().copied().collect()))
                .collect(),
        ),
        attempts: Mutex::new(vec![]),
        cancelled: Mutex::new(vec![]),
        connected: connected_tx,
        frag_len,
        connect_delay: Mutex::new(Duration::ZERO),
    });
    let gateway = Gateway::with_context(s.ctx.clone(), SWEEP_EVERY, s.shutdown.clone());
    let central = match known {
        None => tokio::spawn(serve_ble(gateway, radio.clone(), settings)),
        Some(known) => tokio::spawn(serve_ble_with_memory(
            gateway,
            radio.clone(),
            settings,
            known,
        )),
    };
    Bench {
        s,
        radio,
        adverts,
        connected,
        central,
    }
}

fn advert(device: &str, vouch: bool) -> Advert {
    advert_at(device, "AA:BB:CC:DD:EE:FF", vouch)
}

fn advert_at(device: &str, address: &str, vouch: bool) -> Advert {
    Advert {
        device: device.into(),
        address: address.into(),
        services: if vouch {
            vec![SERVICE_UUID]
        } else {
            vec![0x180f]
        },
    }
}

/// Runs a full handshake and one record each way on a connected peripheral
/// end; returns the peripheral's session.
async fn handshake_on(s: &Setup, end: &mut PeripheralEnd, seed: u64) -> PeripheralEstablished {
    let mut p = PeripheralHandshake::start(
        &PeripheralConfig::default(),
        s.id,
        &s.device,
        &s.anchors,
        Timestamp(0),
        &mut rng(seed),
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let n = p.poll_transmit(&mut buf).unwrap();
    end.send(&buf[..n]).await;
    let resp = end.recv().await;
    p.handle_input(Timestamp(0), &resp).unwrap();
    let n = p.poll_transmit(&mut buf).unwrap();
    end.send(&buf[..n]).await;
    let mut est = p.into_established().unwrap();
    wait_for("session", || s.ctx.table.sessions().len() == 1).await;
    let mut sub = s.ctx.table.sessions().subscribe();
    let mut rec = [0u8; 1024];
    let payload = [0x5a; 300];
    let n = est
        .session
        .seal_data(Timestamp(0), &payload, &mut rec)
        .unwrap();
    end.send(&rec[..n]).await;
    assert_eq!(sub.recv().await.unwrap().data, payload.to_vec());
    let table = s.ctx.table.clone();
    let id = s.id;
    let sender = tokio::spawn(async move { table.sessions().send(id, vec![1u8; 200]).await });
    let msg = end.recv().await;
    let mut out = [0u8; 1024];
    assert_eq!(
        est.session.open(Timestamp(0), &msg, &mut out).unwrap(),
        Inbound::Data(&[1u8; 200][..])
    );
    sender.await.unwrap().unwrap();
    est
}

#[tokio::test]
async fn handshake_and_data_over_ble_at_mtu_23_and_247() {
    for frag_len in [20, 244] {
        let mut b = bench(frag_len, BleSettings::default(), &[]);
        b.adverts.send(advert("dev-1", true)).await.unwrap();
        let (device, mut end) = b.connected.recv().await.unwrap();
        assert_eq!(device, "dev-1");
        let _ = handshake_on(&b.s, &mut end, frag_len as u64).await;
        b.s.shutdown_tx.send(true).unwrap();
    }
}

/// SPEC.md §8.3 on the radio: an empty notification, one over 512 bytes, or
/// a fragment out of sequence drops only the partial message; the link, and
/// the session on it, stay up.
#[tokio::test]
async fn bad_fragments_in_an_established_ble_session_drop_only_their_message() {
    let mut b = bench(20, BleSettings::default(), &[]);
    b.adverts.send(advert("dev-1", true)).await.unwrap();
    let (_, mut end) = b.connected.recv().await.unwrap();
    let mut est = handshake_on(&b.s, &mut end, 3).await;
    let mut sub = b.s.ctx.table.sessions().subscribe();
    let mut rec = [0u8; 1024];
    // A record in 20-byte fragments, interrupted by an empty notification.
    let n = est
        .session
        .seal_data(Timestamp(0), b"lost", &mut rec)
        .unwrap();
    let mut f = Fragmenter::new(&rec[..n], 23).unwrap();
    let mut frag = [0u8; 512];
    let first = f.next_into(&mut frag).unwrap();
    end.to_gateway.send(frag[..first].to_vec()).await.unwrap();
    end.to_gateway.send(vec![]).await.unwrap();
    while let Some(k) = f.next_into(&mut frag) {
        end.to_gateway.send(frag[..k].to_vec()).await.unwrap();
    }
    // A notification over 512 bytes, then a continuation out of sequence.
    end.to_gateway.send(vec![0xc0; 600]).await.unwrap();
    end.to_gateway.send(vec![0x07, 1, 2, 3]).await.unwrap();
    let n = est
        .session
        .seal_data(Timestamp(0), b"kept", &mut rec)
        .unwrap();
    end.send(&rec[..n]).await;
    let got = common::next_inbound_while_live(&b.s, &mut sub).await;
    assert_eq!(got.data, b"kept");
    assert_eq!(b.s.ctx.table.sessions().len(), 1);
    b.s.shutdown_tx.send(true).unwrap();
}

/// Rogue advertisers of the Vouch service that accept the connection and
/// say nothing, new ones (fresh addresses) every 100 ms, cannot keep an
/// honest device from being connected: it takes the slot of the rogue
/// silent the longest at its first advert, long before any rogue's 10 s
/// handshake deadline would free one (paused clock).
#[tokio::test(start_paused = true)]
async fn rogue_silent_advertisers_cannot_keep_an_honest_device_out() {
    let settings = BleSettings {
        max_links: 2,
        ..BleSettings::default()
    };
    let mut b = bench(244, settings, &[]);
    let adverts = b.adverts.clone();
    tokio::spawn(async move {
        for i in 0.. {
            let rogue = format!("rogue-{i}");
            if adverts.send(advert_at(&rogue, &rogue, true)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Rogue links fill both slots; they are kept open and never speak.
    let mut rogues = Vec::new();
    while rogues.len() < 4 {
        let (device, end) = b.connected.recv().await.unwrap();
        assert!(device.starts_with("rogue-"));
        rogues.push(end);
    }
    let start = tokio::time::Instant::now();
    b.adverts
        .send(advert_at("honest", "honest", true))
        .await
        .unwrap();
    let mut honest = loop {
        let (device, end) = b.connected.recv().await.unwrap();
        if device == "honest" {
            break end;
        }
        assert!(
            start.elapsed() < Duration::from_secs(9),
            "the honest device was kept out"
        );
        rogues.push(end);
    };
    let _ = handshake_on(&b.s, &mut honest, 8).await;
    // Rogues keep coming; the honest session keeps its slot.
    while rogues.len() < 40 {
        rogues.push(b.connected.recv().await.unwrap().1);
    }
    assert_eq!(b.s.ctx.table.sessions().len(), 1);
    b.s.shutdown_tx.send(true).unwrap();
}

/// Found in the BLE VM (scenario 7): a connect takes about 10 s under BlueZ,
/// and a link was evictable from the moment the central decided to connect
/// it, so each retry of a silent rogue threw away the connect in progress,
/// the honest device's included. Two rogues that accept every connection and
/// never speak, advertising all the time, against two slots: the honest
/// device is connected once, at its first turn, and authenticates (paused
/// clock: connects one at a time, 10 s each).
#[tokio::test(start_paused = true)]
async fn an_honest_connect_is_not_thrown_away_while_rogues_hold_the_slots() {
    let settings = BleSettings {
        max_links: 2,
        ..BleSettings::default()
    };
    let mut b = bench(244, settings, &[]);
    *b.radio.connect_delay.lock().unwrap() = Duration::from_secs(10);
    let adverts = b.adverts.clone();
    tokio::spawn(async move {
        loop {
            for rogue in ["rogue-1", "rogue-2"] {
                if adverts.send(advert_at(rogue, rogue, true)).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // The rogues are connected first and hold both slots.
    let mut rogues = Vec::new();
    while rogues.len() < 2 {
        let (device, end) = b.connected.recv().await.unwrap();
        assert!(device.starts_with("rogue-"));
        rogues.push(end);
    }
    let start = tokio::time::Instant::now();
    let adverts = b.adverts.clone();
    tokio::spawn(async move {
        while adverts
            .send(advert_at("honest", "honest", true))
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut honest = loop {
        let (device, end) = b.connected.recv().await.unwrap();
        if device == "honest" {
            break end;
        }
        rogues.push(end);
        assert!(rogues.len() < 20, "the honest device was kept out");
    };
    let _ = handshake_on(&b.s, &mut honest, 12).await;
    let waited = start.elapsed();
    let honest_connects = b
        .radio
        .attempts
        .lock()
        .unwrap()
        .iter()
        .filter(|(d, _)| d == "honest")
        .count();
    assert_eq!(
        honest_connects, 1,
        "no connect of the honest device was thrown away"
    );
    // Behind at most the connects already queued (one per rogue), and its own.
    assert!(waited <= Duration::from_secs(35), "{waited:?}");
    assert_eq!(b.s.ctx.table.sessions().len(), 1);
    b.s.shutdown_tx.send(true).unwrap();
}

#[tokio::test(start_paused = true)]
async fn adverts_without_the_vouch_service_are_ignored() {
    let mut b = bench(244, BleSettings::default(), &[]);
    for _ in 0..5 {
        b.adverts.send(advert("speaker", false)).await.unwrap();
    }
    b.adverts.send(advert("dev-1", true)).await.unwrap();
    let (device, _end) = b.connected.recv().await.unwrap();
    assert_eq!(device, "dev-1");
    let attempts = b.radio.attempts.lock().unwrap().clone();
    assert_eq!(
        attempts.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(),
        ["dev-1"]
    );
}

#[tokio::test(start_paused = true)]
async fn connection_aborts_back_off_then_connect() {
    let settings = BleSettings {
        backoff_min: Duration::from_secs(2),
        ..Default::default()
    };
    let mut b = bench(244, settings, &[("dev-1", &[Plan::Fail, Plan::Fail])]);
    let adverts = b.adverts.clone();
    // The device advertises every 100 ms.
    let advertiser = tokio::spawn(async move {
        loop {
            if adverts.send(advert("dev-1", true)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (_, mut end) = b.connected.recv().await.unwrap();
    advertiser.abort();
    let attempts = b.radio.attempts.lock().unwrap().clone();
    assert_eq!(
        attempts.len(),
        3,
        "two failures, then success: {attempts:?}"
    );
    let gap1 = attempts[1].1 - attempts[0].1;
    let gap2 = attempts[2].1 - attempts[1].1;
    // 2 s, then 4 s, each plus up to as much again in jitter (the gateway's
    // one retry schedule, `retry::Retry`), and at most one advert interval
    // late: adverts every 100 ms did not cause retries.
    assert!(
        gap1 >= Duration::from_millis(2000) && gap1 <= Duration::from_millis(4100),
        "{gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(4000) && gap2 <= Duration::from_millis(8100),
        "{gap2:?}"
    );
    handshake_on(&b.s, &mut end, 3).await;
}

#[tokio::test]
async fn first_discovery_failure_is_retried_on_the_same_connection() {
    let mut b = bench(
        244,
        BleSettings::default(),
        &[("dev-1", &[Plan::Ok { setup_failures: 1 }])],
    );
    b.adverts.send(advert("dev-1", true)).await.unwrap();
    let (_, mut end) = b.connected.recv().await.unwrap();
    handshake_on(&b.s, &mut end, 4).await;
    assert_eq!(
        b.radio.attempts.lock().unwrap().len(),
        1,
        "no reconnect was needed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_connect_times_out_and_is_retried() {
    let settings = BleSettings {
        connect_timeout: Duration::from_secs(3),
        backoff_min: Duration::from_secs(1),
        ..Default::default()
    };
    let mut b = bench(244, settings, &[("dev-1", &[Plan::Hang])]);
    let adverts = b.adverts.clone();
    let advertiser = tokio::spawn(async move {
        while adverts.send(advert("dev-1", true)).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let (_, _end) = b.connected.recv().await.unwrap();
    advertiser.abort();
    let attempts = b.radio.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 2);
    assert!(attempts[1].1 - attempts[0].1 >= Duration::from_millis(3000 + 750));
    // Found by the BLE VM test: BlueZ completes a connection the caller gave
    // up on, and the stale connection blocks the next connect unless cancelled.
    assert_eq!(
        *b.radio.cancelled.lock().unwrap(),
        vec!["dev-1".to_string()]
    );
}

/// Found by the BLE VM test: BlueZ makes one LE connection at a time, so
/// connects to several devices that appear together are made in turn, and a
/// device's connect timeout does not run while it waits behind the others.
#[tokio::test(start_paused = true)]
async fn connects_are_made_one_at_a_time() {
    let settings = BleSettings {
        connect_timeout: Duration::from_secs(3),
        backoff_min: Duration::from_secs(1),
        ..Default::default()
    };
    let mut b = bench(244, settings, &[("dev-1", &[Plan::Hang])]);
    b.adverts.send(advert("dev-1", true)).await.unwrap();
    b.adverts.send(advert("dev-2", true)).await.unwrap();
    // dev-2 is connected only once dev-1's hung connect has timed out.
    let (device, mut end) = b.connected.recv().await.unwrap();
    assert_eq!(device, "dev-2");
    let attempts = b.radio.attempts.lock().unwrap().clone();
    assert_eq!(attempts[0].0, "dev-1");
    assert_eq!(attempts[1].0, "dev-2");
    assert!(attempts[1].1 - attempts[0].1 >= Duration::from_secs(3));
    assert!(
        b.radio
            .cancelled
            .lock()
            .unwrap()
            .contains(&"dev-1".to_string()),
        "the timed-out connect was cancelled"
    );
    handshake_on(&b.s, &mut end, 11).await;
}

#[tokio::test(start_paused = true)]
async fn the_link_cap_holds() {
    let settings = BleSettings {
        max_links: 1,
        ..Default::default()
    };
    let mut b = bench(244, settings, &[]);
    b.adverts.send(advert("dev-1", true)).await.unwrap();
    let (_, mut end1) = b.connected.recv().await.unwrap();
    let _ = handshake_on(&b.s, &mut end1, 4).await;
    // While dev-1's session holds the only link, dev-2 is not connected,
    // however often it advertises (a link that spoke keeps its slot).
    for _ in 0..10 {
        b.adverts.send(advert("dev-2", true)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.radio.attempts.lock().unwrap().len(), 1);
    // dev-1 goes away.
    drop(end1);
    let adverts = b.adverts.clone();
    let advertiser = tokio::spawn(async move {
        while adverts.send(advert("dev-2", true)).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (device, _end2) = b.connected.recv().await.unwrap();
    advertiser.abort();
    assert_eq!(device, "dev-2");
}

/// Found by the BLE VM test: BlueZ reports a known device again only when its
/// advertisement changes, so a device that advertised once and whose first
/// connect failed must be retried without a new advert.
#[tokio::test(start_paused = true)]
async fn a_failed_device_is_retried_without_a_new_advert() {
    let settings = BleSettings {
        backoff_min: Duration::from_secs(1),
        ..Default::default()
    };
    let mut b = bench(244, settings, &[("dev-1", &[Plan::Fail])]);
    b.adverts.send(advert("dev-1", true)).await.unwrap();
    let (_, mut end) = b.connected.recv().await.unwrap();
    assert_eq!(
        b.radio.attempts.lock().unwrap().len(),
        2,
        "retried after the backoff, from the one advert"
    );
    handshake_on(&b.s, &mut end, 9).await;
}

/// Found by the BLE VM test: a device that rebooted on the same address is
/// not reported again by BlueZ until its cached entry expires, so after a
/// session ends the central tries the device again from its last advert.
#[tokio::test(start_paused = true)]
async fn a_device_that_rebooted_is_reconnected_without_a_new_advert() {
    let settings = BleSettings {
        backoff_min: Duration::from_secs(1),
        ..Default::default()
    };
    let mut b = bench(244, settings, &[]);
    b.adverts.send(advert("dev-1", true)).await.unwrap();
    let (_, mut end) = b.connected.recv().await.unwrap();
    handshake_on(&b.s, &mut end, 21).await;
    drop(end); // the device reboots: the link drops
    let (device, mut end) = b.connected.recv().await.unwrap();
    assert_eq!(device, "dev-1");
    assert_eq!(
        b.radio.attempts.lock().unwrap().len(),
        2,
        "one advert, two links"
    );
    handshake_on(&b.s, &mut end, 22).await;
}

/// A device that left for good costs a bounded number of connects (each may
/// take the whole connect timeout, and connects are made one at a time).
#[tokio::test(start_paused = true)]
async fn a_device_gone_for_good_costs_a_bounded_number_of_connects() {
    use vouch_gateway::serve::ble::STALE_ATTEMPTS;
    let settings = BleSettings {
        backoff_min: Duration::from_secs(1),
        ..Default::default()
    };
    let b = bench(244, settings, &[("dev-1", &[Plan::Fail; 20])]);
    b.adverts.send(advert("dev-1", true)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    assert_eq!(
        b.radio.attempts.lock().unwrap().len() as u32,
        1 + STALE_ATTEMPTS,
        "the advert's attempt, then the remembered advert's"
    );
    // A new report of the device starts over.
    b.adverts.send(advert("dev-1", true)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        b.radio.attempts.lock().unwrap().len() as u32,
        2 + STALE_ATTEMPTS
    );
}

/// Found by the BLE VM test: once a device has been connected, BlueZ replaces
/// its service list with the services it resolved over GATT, which may not
/// include the Vouch service, so its later reports lack it. A device that
/// advertised the service before is still recognised.
#[tokio::test(start_paused = true)]
async fn a_device_reported_later_without_the_service_is_still_recognised() {
    use vouch_gateway::serve::ble::STALE_ATTEMPTS;
    let settings = BleSettings {
        backoff_min: Duration::from_secs(1),
        ..Default::default()
    };
    // The first link works; then the device is away for longer than the
    // retries from its remembered advert last.
    let away = [Plan::Fail; STALE_ATTEMPTS as usize];
    let mut plans = vec![Plan::Ok { setup_failures: 0 }];
    plans.extend_from_slice(&away);
    let mut b = bench(244, settings, &[("dev-1", &plans)]);
    b.adverts.send(advert("dev-1", true)).await.unwrap();
    let (_, mut end) = b.connected.recv().await.unwrap();
    handshake_on(&b.s, &mut end, 31).await;
    drop(end);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        b.radio.attempts.lock().unwrap().len() as u32,
        1 + STALE_ATTEMPTS,
        "the retries from the remembered advert ran out"
    );
    // BlueZ reports the device again, now without the Vouch service.
    b.adverts.send(advert("dev-1", false)).await.unwrap();
    let (device, mut end) = tokio::time::timeout(Duration::from_secs(120), b.connected.recv())
        .await
        .expect("the device is connected again")
        .unwrap();
    assert_eq!(device, "dev-1");
    handshake_on(&b.s, &mut end, 32).await;
}

/// BlueZ keeps a device it knows across a gateway restart and reports it
/// with the services it resolved over GATT, not the advertised Vouch
/// service: the central's memory of Vouch devices (by address, in the state
/// directory) must outlive the process, or such a device waits minutes for
/// a report that carries the service.
#[tokio::test(start_paused = true)]
async fn the_memory_of_vouch_devices_survives_a_restart_of_the_central() {
    const DEV1: &str = "C0:FF:EE:00:00:01";
    const SPEAKER: &str = "C0:FF:EE:00:00:02";
    let tmp = TempDir::new("ble-memory");
    let state = StateDir::open(tmp.path()).unwrap();
    let settings = BleSettings {
        backoff_min: Duration::from_secs(1),
        ..Default::default()
    };

    // First run: dev-1 advertises the Vouch service and is connected.
    let known = KnownDevices::open(&state);
    assert!(known.is_empty());
    let mut b = bench_with(244, settings, &[], Some(known.clone()));
    b.adverts
        .send(advert_at("dev-1", DEV1, true))
        .await
        .unwrap();
    let (device, mut end) = b.connected.recv().await.unwrap();
    assert_eq!(device, "dev-1");
    handshake_on(&b.s, &mut end, 41).await;
    known.flush().await;
    b.s.shutdown_tx.send(true).unwrap();
    drop(end);
    b.central.await.unwrap().unwrap();
    let file = state.devices_path();
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The gateway restarts. BlueZ reports dev-1 with its resolved services
    // (no Vouch UUID), and a speaker it never saw advertise the service.
    let known = KnownDevices::open(&state);
    assert!(known.contains(DEV1) && !known.contains(SPEAKER));
    let mut b = bench_with(244, settings, &[], Some(known));
    b.adverts
        .send(advert_at("speaker", SPEAKER, false))
        .await
        .unwrap();
    b.adverts
        .send(advert_at("dev-1", DEV1, false))
        .await
        .unwrap();
    let (device, mut end) = tokio::time::timeout(Duration::from_secs(120), b.connected.recv())
        .await
        .expect("the remembered device is connected")
        .unwrap();
    assert_eq!(device, "dev-1");
    assert_eq!(
        b.radio
            .attempts
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.0.as_str())
            .collect::<Vec<_>>(),
        ["dev-1"],
        "the speaker is still ignored"
    );
    handshake_on(&b.s, &mut end, 42).await;
}

/// A damaged memory file is not fatal: the central starts with an empty
/// memory and learns devices from their advertisements again.
#[tokio::test]
async fn a_damaged_device_memory_file_is_skipped() {
    let tmp = TempDir::new("ble-damaged");
    let state = StateDir::open(tmp.path()).unwrap();
    let known = KnownDevices::open(&state);
    known.remember("C0:FF:EE:00:00:03");
    known.flush().await;
    let mut bytes = std::fs::read(state.devices_path()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(state.devices_path(), &bytes).unwrap();
    let known = KnownDevices::open(&state);
    assert!(known.is_empty());
    // The next device remembered replaces the file with a good one.
    known.remember("C0:FF:EE:00:00:04");
    known.flush().await;
    assert!(KnownDevices::open(&state).contains("C0:FF:EE:00:00:04"));
}
