//! Secrets are types, not fields (SPEC.md §11.14): every public type that
//! holds key material zeroizes it on drop, and none prints it.

use vouch_proto::handshake::backend::BackendKeys;
use vouch_proto::handshake::gateway::GatewayTicket;
use vouch_proto::handshake::peripheral::PeripheralTicket;
use vouch_proto::keys::{IdentityKey, KeyId, SealingKey};
use vouch_proto::session::Session;
use vouch_proto::testing::{rng, Pair};

/// Compiles only for types that zeroize on drop.
fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}

#[test]
fn every_type_holding_key_material_zeroizes_on_drop() {
    zeroized_on_drop::<IdentityKey>();
    zeroized_on_drop::<SealingKey>();
    zeroized_on_drop::<BackendKeys>();
    zeroized_on_drop::<Session>();
    zeroized_on_drop::<PeripheralTicket>();
    zeroized_on_drop::<GatewayTicket>();
    zeroized_on_drop::<zeroize::Zeroizing<[u8; 32]>>();
    #[cfg(feature = "cortex-m")]
    zeroized_on_drop::<vouch_proto::provider::cortex_m::SigningKey>();

    // What key material leaves these types does so in a zeroizing wrapper,
    // and their Debug output shows none of it.
    let seed = [7u8; 32];
    let key = IdentityKey::from_seed(&seed);
    let pem = key.to_pkcs8_pem().expect("pem");
    let _: &zeroize::Zeroizing<String> = &pem;
    let backend = BackendKeys::generate(KeyId(1), &mut rng(2));
    let sealing = backend.sealing().danger_to_bytes();
    let _: &zeroize::Zeroizing<[u8; 32]> = &sealing;
    let (p, g) = Pair::new(3).full_handshake().expect("handshake");
    let (send, recv) = p.session.danger_export_keys();
    let seed_hex = hex(&seed);
    for shown in [
        format!("{key:?}"),
        format!("{backend:?}"),
        format!("{:?}", p.session),
        format!("{:?}", p.ticket),
        format!("{:?}", g.ticket),
    ] {
        for secret in [&seed_hex, &hex(&send), &hex(&recv), &hex(&*sealing)] {
            assert!(!shown.contains(secret.as_str()), "{shown}");
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}
