//! Trust-anchor rotation (SPEC.md §7.7) end to end over TCP. The gateway
//! library has no API to push an anchor update yet, so the gateway here is the
//! protocol's gateway role driven by the test over the same TCP framing, with
//! the same in-process backend.

mod common;

use std::sync::Arc;

use common::{next_matching, provisioned, Backend, Running, DEADLINE};
use tokio::net::TcpListener;
use vouch_peripheral::{Event, FileKeyStore, KeyStore, Link, TcpLink};
use vouch_proto::anchor::{AnchorAction, AnchorUpdate};
use vouch_proto::handshake::backend::BackendKeys;
use vouch_proto::handshake::gateway::{
    GatewayConfig, GatewayEstablished, GatewayEvent, GatewayHandshake,
};
use vouch_proto::keys::KeyId;
use vouch_proto::session::{CloseReason, Inbound};
use vouch_proto::testing::rng;
use vouch_proto::wire::{Hello, Scope};
use vouch_proto::Timestamp;

const NOW: Timestamp = Timestamp(1_000);

/// The protocol's gateway role on a TCP listener.
struct ProtoGateway {
    listener: TcpListener,
    backend: Arc<Backend>,
    rng: rand_chacha::ChaCha20Rng,
}

impl ProtoGateway {
    async fn recv(link: &mut TcpLink) -> Option<Vec<u8>> {
        tokio::time::timeout(DEADLINE, link.recv())
            .await
            .expect("the device sent something")
            .expect("link")
    }

    /// Accepts connections until one completes a full handshake (resumptions
    /// are rejected: this gateway keeps no tickets). Returns the link, the
    /// session and the device's Hello.
    async fn full_session(&mut self) -> (TcpLink, GatewayEstablished, Vec<u8>) {
        loop {
            let (stream, _) = tokio::time::timeout(DEADLINE, self.listener.accept())
                .await
                .expect("the device connects")
                .unwrap();
            let mut link = TcpLink::new(stream, 247, Default::default()).unwrap();
            let Some(first) = Self::recv(&mut link).await else {
                continue;
            };
            let mut hs =
                GatewayHandshake::new(GatewayConfig::new(self.backend.gateway.public_key()), NOW);
            hs.handle_input(NOW, &first, &mut self.rng).unwrap();
            match hs.poll_event() {
                Some(GatewayEvent::NeedVouch(req)) => {
                    hs.handle_vouch(NOW, self.backend.answer(&req)).unwrap()
                }
                Some(GatewayEvent::NeedTicket(_)) => {
                    // Unknown ticket: answer ResumptionRejected.
                    let _ = hs.handle_ticket(NOW, None, &mut self.rng);
                }
                None => panic!("no event after the first message"),
            }
            while let Some(out) = hs.poll_transmit() {
                link.send(&out).await.unwrap();
            }
            if hs.error().is_some() {
                continue;
            }
            let finish = Self::recv(&mut link).await.expect("finish");
            hs.handle_input(NOW, &finish, &mut self.rng).unwrap();
            return (link, hs.into_established().unwrap(), first);
        }
    }
}

async fn push_update(link: &mut TcpLink, est: &mut GatewayEstablished, update: &AnchorUpdate) {
    let mut buf = [0u8; 256];
    let n = est
        .session
        .seal_anchor_update(NOW, update, &mut buf)
        .unwrap();
    link.send(&buf[..n]).await.unwrap();
}

#[tokio::test]
async fn anchors_rotate_over_the_session_and_the_next_hello_seals_to_the_new_key() {
    let backend = Backend::new(30);
    let k1 = backend.keys(1);
    let k2 = backend.add_keys(backend.future_keys(2));
    let k3 = backend.future_keys(3);
    let mut gw = ProtoGateway {
        listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        backend: backend.clone(),
        rng: rng(33),
    };
    let url = format!("tcp://{}", gw.listener.local_addr().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let id = provisioned(
        &backend,
        tmp.path(),
        Scope(Scope::TELEMETRY.0 | Scope::COMMAND.0),
    );
    let mut dev = Running::boot(tmp.path(), &url, 34);

    let (mut link, mut est, hello) = gw.full_session().await;
    assert_eq!(est.peripheral.id, id);
    assert_eq!(Hello::peek(&hello).unwrap().anchor, KeyId(1));
    dev.established().await;

    // Rotate to key 2, which the device holds a commitment to; key 2 signs,
    // and commits to key 3.
    let rotate = AnchorUpdate::sign(
        1,
        AnchorAction::Rotate {
            anchor: k2.anchor(),
            next: k3.anchor().digest(),
        },
        KeyId(2),
        k2.signing(),
    );
    push_update(&mut link, &mut est, &rotate).await;
    let (serial, primary) =
        next_matching(
            &mut dev.events,
            &mut dev.seen,
            "anchors updated",
            |e| match e {
                Event::AnchorsUpdated { serial, primary } => Some((*serial, *primary)),
                _ => None,
            },
        )
        .await;
    assert_eq!((serial, primary), (1, KeyId(2)));
    let on_disk = FileKeyStore::open(tmp.path()).unwrap().anchors().unwrap();
    assert_eq!(on_disk.serial(), 1);
    assert_eq!(on_disk.primary(), &k2.anchor());
    assert_eq!(on_disk.next(), &k3.anchor().digest());

    // A replay of the same update, and updates signed by the key the device
    // was provisioned with (a thief of key 1: a rotation to its own key, and
    // the first design's Replace at the highest serial), are refused; the
    // anchors do not change and the session goes on.
    let rogue = BackendKeys::generate(KeyId(9), &mut rng(32));
    let own = AnchorUpdate::sign(
        2,
        AnchorAction::Rotate {
            anchor: rogue.anchor(),
            next: rogue.anchor().digest(),
        },
        KeyId(1),
        k1.signing(),
    );
    let replace = AnchorUpdate::sign(
        u32::MAX,
        AnchorAction::Replace(rogue.anchor()),
        KeyId(1),
        k1.signing(),
    );
    for bad in [&rotate, &own, &replace] {
        push_update(&mut link, &mut est, bad).await;
        next_matching(&mut dev.events, &mut dev.seen, "a refused update", |e| {
            matches!(e, Event::AnchorUpdateRejected(_)).then_some(())
        })
        .await;
    }
    assert_eq!(
        FileKeyStore::open(tmp.path()).unwrap().anchors().unwrap(),
        on_disk
    );
    let mut buf = [0u8; 128];
    let n = est.session.seal_data(NOW, b"ping", &mut buf).unwrap();
    link.send(&buf[..n]).await.unwrap();
    assert_eq!(dev.data().await, b"ping");

    // The gateway ends the session; the device comes back (its resumption is
    // rejected here) and its new Hello is sealed to the new primary key,
    // which the backend opens with key 2 and vouches with.
    let n = est
        .session
        .seal_close(NOW, CloseReason::NORMAL, &mut buf)
        .unwrap();
    link.send(&buf[..n]).await.unwrap();
    let end = dev.session_end().await;
    assert!(end.contains("ClosedByGateway(CloseReason(0))"), "{end}");
    drop(link);
    let (mut link, mut est, hello) = gw.full_session().await;
    assert_eq!(Hello::peek(&hello).unwrap().anchor, KeyId(2));
    let s = dev.established().await;
    assert!(!s.resumed);

    // The next rotation, to key 3, signed by key 3, applies in turn.
    let k4 = backend.future_keys(4);
    let k3 = backend.add_keys(k3);
    let rotate = AnchorUpdate::sign(
        2,
        AnchorAction::Rotate {
            anchor: k3.anchor(),
            next: k4.anchor().digest(),
        },
        KeyId(3),
        k3.signing(),
    );
    push_update(&mut link, &mut est, &rotate).await;
    let (serial, primary) = next_matching(
        &mut dev.events,
        &mut dev.seen,
        "the second rotation",
        |e| match e {
            Event::AnchorsUpdated { serial, primary } => Some((*serial, *primary)),
            _ => None,
        },
    )
    .await;
    assert_eq!((serial, primary), (2, KeyId(3)));
    let on_disk = FileKeyStore::open(tmp.path()).unwrap().anchors().unwrap();
    assert!(on_disk.get(KeyId(1)).is_none() && on_disk.get(KeyId(2)).is_none());

    // Shutting the device down sends a close record with reason shutdown.
    let seen = dev.shutdown().await;
    let msg = ProtoGateway::recv(&mut link).await.expect("a close record");
    let mut plain = [0u8; 64];
    assert_eq!(
        est.session.open(NOW, &msg, &mut plain).unwrap(),
        Inbound::Close(CloseReason::SHUTDOWN),
        "{seen:#?}"
    );
}
