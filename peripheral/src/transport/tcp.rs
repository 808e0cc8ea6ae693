//! The TCP transport (SPEC.md §8.4): the device dials the gateway and sends
//! the BLE fragments of a configured ATT MTU, each preceded by its length as
//! two bytes little-endian.

use std::time::Duration;

use tokio::net::TcpStream;
use vouch_proto::framing::ReassemblyLimits;

use super::{check_att_mtu, Connector, LinkError};

/// The ATT MTU the TCP transport uses unless told otherwise (SPEC.md §8.4).
pub const DEFAULT_ATT_MTU: usize = 247;

/// Dials a gateway over TCP.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    addr: String,
    att_mtu: usize,
    connect_timeout: Duration,
}

impl TcpConnector {
    /// A connector to `addr` (`HOST:PORT`) with fragments for `att_mtu`
    /// (23..=517).
    pub fn new(addr: impl Into<String>, att_mtu: usize) -> Result<Self, LinkError> {
        let addr = addr.into();
        if addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(LinkError::InvalidAddress(addr));
        }
        Ok(Self {
            addr,
            att_mtu: check_att_mtu(att_mtu)?,
            connect_timeout: Duration::from_secs(10),
        })
    }

    /// A connector from a URL `tcp://HOST:PORT`.
    pub fn from_url(url: &str, att_mtu: usize) -> Result<Self, LinkError> {
        let addr = url
            .strip_prefix("tcp://")
            .ok_or_else(|| LinkError::InvalidAddress(url.to_string()))?;
        Self::new(addr.trim_end_matches('/'), att_mtu)
    }

    /// Sets how long a connection attempt may take (default 10 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The ATT MTU the fragments are sized for.
    pub fn att_mtu(&self) -> usize {
        self.att_mtu
    }
}

impl Connector for TcpConnector {
    type Link = TcpLink;

    async fn connect(&mut self) -> Result<TcpLink, LinkError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| LinkError::Timeout)??;
        Ok(TcpLink::new(
            stream,
            self.att_mtu,
            ReassemblyLimits::default(),
        )?)
    }

    fn describe(&self) -> String {
        format!("tcp://{}", self.addr)
    }
}

/// A TCP connection to a gateway carrying Vouch messages: the same link the
/// gateway's end uses.
pub use vouch_host::tcp::TcpLink;

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use vouch_proto::framing::{stream, MAX_FRAGMENT};

    use super::super::{fragments, Link};
    use super::*;

    #[test]
    fn addresses_and_mtus_are_checked() {
        assert!(TcpConnector::from_url("tcp://127.0.0.1:7800", 247).is_ok());
        assert!(TcpConnector::from_url("tcp://gw.local:7800/", 23).is_ok());
        for bad in [
            "127.0.0.1:7800",
            "tcp://",
            "tcp://host",
            "tcp://host:port",
            "udp://h:1",
            "tcp://:1",
        ] {
            assert!(
                matches!(
                    TcpConnector::from_url(bad, 247),
                    Err(LinkError::InvalidAddress(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            TcpConnector::from_url("tcp://h:1", 22),
            Err(LinkError::InvalidMtu(22))
        ));
        assert!(matches!(
            TcpConnector::from_url("tcp://h:1", 518),
            Err(LinkError::InvalidMtu(518))
        ));
    }

    /// SPEC.md §8.3, §8.4: an empty frame, a frame announcing more than 512
    /// bytes, and a bad fragment each cost only their partial message; the
    /// link goes on and the next message arrives.
    #[tokio::test]
    async fn bad_frames_and_fragments_cost_only_their_partial_message() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let mut link = TcpLink::new(stream, 23, ReassemblyLimits::default()).unwrap();
            let mut got = Vec::new();
            while let Ok(Some(msg)) = link.recv().await {
                got.push(msg);
            }
            got
        });
        let (mut gateway, _) = listener.accept().await.unwrap();
        let framed = |fragment: &[u8]| {
            let mut out = [0u8; MAX_FRAGMENT + stream::PREFIX];
            let n = stream::encode(fragment, &mut out).unwrap();
            out[..n].to_vec()
        };
        let mut wire = Vec::new();
        // The first fragment of a two-fragment message, then an empty frame:
        // the partial message is dropped, the link stays.
        let two = fragments(&[7u8; 30], 23).unwrap();
        wire.extend(framed(&two[0]));
        wire.extend([0, 0]);
        wire.extend(framed(&[0x80 | 0x40, 1])); // a whole message: [1]
                                                // A frame announcing 600 bytes: its bytes are skipped unbuffered.
        wire.extend(600u16.to_le_bytes());
        wire.extend([0xee; 600]);
        wire.extend(framed(&[0x80 | 0x40, 2]));
        // A bad fragment (a continuation with nothing in progress).
        wire.extend(framed(&[0x01, 9, 9]));
        for f in &two {
            wire.extend(framed(f));
        }
        gateway.write_all(&wire).await.unwrap();
        drop(gateway);
        let got = client.await.unwrap();
        assert_eq!(got, vec![vec![1], vec![2], vec![7u8; 30]]);
    }
}
