//! What `vouch-gateway status` says of the backend (issue 19): whether it
//! answers the revocation feed, since when it does not and why, and that it
//! answers again once it is back.

use vouch_tests::{wait_for, Backend, Gateway};

#[tokio::test]
async fn the_gateway_knows_when_its_backend_stops_answering_and_when_it_is_back() {
    let mut backend = Backend::start().await;
    let gateway = Gateway::start(&backend, "plant-1").await;
    gateway.caught_up().await;
    assert!(gateway.table.feed().backend_down().is_none());

    backend.stop().await;
    let (_, error) = wait_for("the feed to notice the backend is gone", || {
        gateway.table.feed().backend_down()
    })
    .await;
    assert!(!error.is_empty());
    assert!(
        !error.contains("error sending request"),
        "the status says what failed: {error}"
    );

    // Back: the feed's next poll after a failure answers at once (no
    // long-poll), so this does not wait for one to time out.
    backend.restart().await;
    wait_for("the feed to reach the backend again", || {
        gateway.table.feed().backend_down().is_none().then_some(())
    })
    .await;
}
