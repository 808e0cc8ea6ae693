//! lakers EDHOC (RFC 9528) in memory, as its own tests and README drive it:
//! method 3 (STAT-STAT, static Diffie-Hellman keys on both sides; the only
//! method lakers implements) with cipher suite 2 (P-256, SHA-256,
//! AES-CCM-16-64-128), the RustCrypto backend with the OS RNG, credentials
//! (CCS) transferred by reference (kid), no EAD, three messages (message 4 is
//! optional and not sent), and the OSCORE master secret exported on both
//! sides. The static keys and credentials are those of RFC 9529's traces.

use lakers::{
    credential_check_or_fetch, Credential, CredentialTransfer, EDHOCMethod, EDHOCSuite,
    EdhocInitiator, EdhocResponder,
};
use lakers_crypto_rustcrypto::Crypto;
use rand_core_06::OsRng;

use super::{
    BenchError, Bytes, Flight, PeerCpu, PeerHandshake, PeerReport, Provides, Samples, Stopwatch,
};

const I: usize = 0;
const R: usize = 1;

/// RFC 9529 §3 (lakers' `test_vectors_common`): the initiator's CCS and
/// P-256 private key, the responder's CCS and private key.
const CRED_I: &str = "A2027734322D35302D33312D46462D45462D33372D33322D333908A101A5010202412B2001215820AC75E9ECE3E50BFC8ED60399889522405C47BF16DF96660A41298CB4307F7EB62258206E5DE611388A4B8A8211334AC7D37ECB52A387D257E6DB3C2A93DF21FF3AFFC8";
const KEY_I: &str = "fb13adeb6518cee5f88417660841142e830a81fe334380a953406a1305e8706b";
const CRED_R: &str = "A2026008A101A5010202410A2001215820BBC34960526EA4D32E940CAD2A234148DDC21791A12AFBCBAC93622046DD44F02258204519E257236B2A0CE2023F0931F1F386CA7AFDA64FCDE0108C224C51EABF6072";
const KEY_R: &str = "72cc4761dbd4c78f758931aa589d348d1ef874a7e303ede2f140dcf3e6aa4aac";

const PROVIDES: Provides = Provides {
    mutual_auth: "yes: static P-256 DH keys in credentials (CCS) known to the other side \
                  in advance or fetched by the application",
    third_party: "no (the lake-authz EAD extension could add an enrollment server; not \
                  used here)",
    identity_hiding: "initiator: encrypted in message 3, after the responder authenticated \
                      (hidden from active attackers); responder: from passive listeners",
};

struct Keys {
    cred_i: Credential,
    cred_r: Credential,
    i: [u8; 32],
    r: [u8; 32],
}

fn keys() -> Result<Keys, BenchError> {
    let bytes = |h: &str| hex::decode(h).map_err(|_| BenchError::Invariant("bad EDHOC vector"));
    let key = |h: &str| -> Result<[u8; 32], BenchError> {
        bytes(h)?
            .try_into()
            .map_err(|_| BenchError::Invariant("bad EDHOC key length"))
    };
    Ok(Keys {
        cred_i: Credential::parse_ccs(&bytes(CRED_I)?)?,
        cred_r: Credential::parse_ccs(&bytes(CRED_R)?)?,
        i: key(KEY_I)?,
        r: key(KEY_R)?,
    })
}

/// Measures `iterations` handshakes.
pub(super) fn measure(iterations: usize, warmup: usize) -> Result<PeerReport, BenchError> {
    let keys = keys()?;
    let mut samples = Samples::with_capacity(iterations);
    let mut bytes = None;
    for i in 0..warmup + iterations {
        let (times, b) = handshake(&keys)?;
        if i >= warmup {
            samples.push(times);
        }
        bytes = Some(b);
    }
    let bytes = bytes.ok_or(BenchError::Invariant("no EDHOC handshake ran"))?;
    Ok(PeerReport {
        name: "lakers EDHOC".to_owned(),
        what: "lakers 0.8 (RustCrypto backend), EDHOC method 3 (static DH both sides), \
               cipher suite 2 (P-256, SHA-256, AES-CCM), credentials by reference, \
               3 messages, OSCORE secret exported"
            .to_owned(),
        full: PeerHandshake {
            cpu_us: PeerCpu {
                initiator: samples.median_of(I),
                responder: samples.median_of(R),
                total: samples.median_total(),
            },
            round_trips: bytes.round_trips(),
            bytes_on_air: bytes,
            tcp: None,
        },
        resumed: None,
        provides: PROVIDES,
    })
}

fn handshake(keys: &Keys) -> Result<([Stopwatch; 2], Bytes), BenchError> {
    let mut sw = [Stopwatch::default(); 2];
    let initiator = sw[I].time(|| {
        EdhocInitiator::new(
            Crypto::new(OsRng),
            EDHOCMethod::StatStat,
            EDHOCSuite::CipherSuite2,
        )
    });
    let responder = sw[R].time(|| {
        EdhocResponder::new(
            Crypto::new(OsRng),
            EDHOCMethod::StatStat,
            keys.r,
            keys.cred_r,
        )
    });

    let (initiator, message_1) = sw[I].time(|| initiator.prepare_message_1(None, &None))?;
    let (responder, message_2) = sw[R].time(|| {
        let (responder, _c_i, _ead_1) = responder.process_message_1(&message_1)?;
        responder.prepare_message_2(CredentialTransfer::ByReference, None, &None)
    })?;
    let (_initiator, message_3) = sw[I].time(|| {
        let (mut initiator, _c_r, id_cred_r, _ead_2) = initiator.parse_message_2(&message_2)?;
        let cred_r = credential_check_or_fetch(Some(keys.cred_r), id_cred_r)?;
        // The initiator reveals its identity only after checking the responder's.
        initiator.set_identity(keys.i, keys.cred_i)?;
        let initiator = initiator.verify_message_2(cred_r)?;
        let (initiator, message_3, _prk_out) =
            initiator.prepare_message_3(CredentialTransfer::ByReference, &None)?;
        let mut done = initiator.completed_without_message_4()?;
        let _oscore_secret = done.edhoc_exporter(0, &[], 16);
        Ok::<_, lakers::EDHOCError>((done, message_3))
    })?;
    sw[R].time(|| {
        let (responder, id_cred_i, _ead_3) = responder.parse_message_3(&message_3)?;
        let cred_i = credential_check_or_fetch(Some(keys.cred_i), id_cred_i)?;
        let (responder, _prk_out) = responder.verify_message_3(cred_i)?;
        let mut done = responder.completed_without_message_4()?;
        let _oscore_secret = done.edhoc_exporter(0, &[], 16);
        Ok::<_, lakers::EDHOCError>(())
    })?;

    let flight = |n: usize, from: &'static str, bytes: usize| Flight {
        name: format!("message_{n}"),
        from,
        bytes,
        post_handshake: false,
    };
    Ok((
        sw,
        Bytes::new(vec![
            flight(1, "initiator", message_1.len),
            flight(2, "responder", message_2.len),
            flight(3, "initiator", message_3.len),
        ]),
    ))
}
