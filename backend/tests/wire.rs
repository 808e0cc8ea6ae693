//! Golden bytes of the bodies appended to `vouch_proto::wire::backend` for
//! the backend (feed and session reports): postcard is not self-describing,
//! so these bytes are the wire format and must never change.

use vouch_proto::keys::{IdentityKey, PeripheralId};
use vouch_proto::wire::backend::{
    decode_body, encode_body, EventTimes, FeedBatch, FeedChange, FeedEvent, SessionEvent,
    SessionEventKind, SessionReport, SessionReportAnswer, SessionVerdict,
};

#[test]
fn feed_batch_bytes() {
    let id = PeripheralId([1, 2, 3, 4, 5, 6, 7, 8]);
    let gw = IdentityKey::from_seed(&[9; 32]).public_key();
    let batch = FeedBatch {
        events: vec![
            FeedEvent {
                seq: 1,
                at_ms: 300,
                change: FeedChange::PeripheralRevoked(id),
            },
            FeedEvent {
                seq: 2,
                at_ms: 0,
                change: FeedChange::GatewaySuspended(gw),
            },
            FeedEvent {
                seq: 3,
                at_ms: 0,
                change: FeedChange::PolicyChanged,
            },
        ],
        next: 3,
    };
    let mut want = vec![1u8, 3];
    want.extend([1, 0xac, 0x02, 1]); // seq 1, at_ms 300 (varint), PeripheralRevoked
    want.extend(id.0);
    want.extend([2, 0, 3]); // seq 2, at_ms 0, GatewaySuspended
    want.extend(gw.as_bytes());
    want.extend([3, 0, 6]); // seq 3, at_ms 0, PolicyChanged
    want.push(3); // next
    let bytes = encode_body(&batch);
    assert_eq!(bytes, want);
    assert_eq!(decode_body::<FeedBatch>(&bytes).unwrap(), batch);
    // Discriminants of every change, in declaration order.
    for (i, c) in [
        FeedChange::PeripheralSuspended(id),
        FeedChange::PeripheralRevoked(id),
        FeedChange::PeripheralReinstated(id),
        FeedChange::GatewaySuspended(gw),
        FeedChange::GatewayRevoked(gw),
        FeedChange::GatewayReinstated(gw),
        FeedChange::PolicyChanged,
        FeedChange::AnchorUpdates(3),
    ]
    .into_iter()
    .enumerate()
    {
        let b = encode_body(&FeedBatch {
            events: vec![FeedEvent {
                seq: 0,
                at_ms: 0,
                change: c,
            }],
            next: 0,
        });
        assert_eq!(b[4], i as u8);
    }
    // The serial of AnchorUpdates is a varint after its discriminant.
    let b = encode_body(&FeedBatch {
        events: vec![FeedEvent {
            seq: 4,
            at_ms: 0,
            change: FeedChange::AnchorUpdates(300),
        }],
        next: 4,
    });
    assert_eq!(b, [1, 1, 4, 0, 7, 0xac, 0x02, 4]);
}

#[test]
fn session_report_bytes() {
    let id = PeripheralId([8; 8]);
    let report = SessionReport {
        events: vec![
            SessionEvent {
                peripheral: id,
                kind: SessionEventKind::Attached,
                session_id: [1; 8],
            },
            SessionEvent {
                peripheral: id,
                kind: SessionEventKind::Detached,
                session_id: [2; 8],
            },
        ],
        times: vec![
            EventTimes {
                started_ms_ago: 300,
                heard_ms_ago: 300,
            },
            EventTimes {
                started_ms_ago: 70_000,
                heard_ms_ago: 1_200,
            },
        ],
    };
    let mut want = vec![1u8, 2];
    want.extend([8; 8]);
    want.push(0);
    want.extend([1; 8]);
    want.extend([8; 8]);
    want.push(1);
    want.extend([2; 8]);
    // Without the times: what a gateway that predates them sends.
    let old = want.clone();
    // Two times entries, each two varints: 300, 300; 70000, 1200.
    want.push(2);
    want.extend([0xac, 0x02, 0xac, 0x02]);
    want.extend([0xf0, 0xa2, 0x04, 0xb0, 0x09]);
    assert_eq!(encode_body(&report), want);
    assert_eq!(SessionReport::decode(&want), Ok(report.clone()));
    let events_only = SessionReport {
        times: Vec::new(),
        ..report
    };
    assert_eq!(SessionReport::decode(&old), Ok(events_only));
    assert!(
        decode_body::<SessionReport>(&old).is_err(),
        "the plain decoder wants the times"
    );
    let answer = SessionReportAnswer {
        items: vec![
            SessionVerdict::Accepted,
            SessionVerdict::CloneSuspected,
            SessionVerdict::Refused,
        ],
    };
    assert_eq!(encode_body(&answer), vec![1, 3, 0, 1, 2]);
    assert!(
        decode_body::<SessionReportAnswer>(&[1, 1, 3]).is_err(),
        "unknown verdict accepted"
    );
    assert!(
        decode_body::<SessionReportAnswer>(&[2, 0]).is_err(),
        "other version accepted"
    );
}
