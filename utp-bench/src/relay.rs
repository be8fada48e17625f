//! Loopback UDP helpers shared by the benchmark and the librqbit-utp
//! interop test (which includes this file with `#[path]`, so it depends on
//! nothing else in the crate).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use tokio::net::UdpSocket;

/// 127.0.0.1, any port.
pub(crate) fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A UDP socket on loopback with 4 MiB buffers (a relay or a raw sender
/// must not be the bottleneck).
pub(crate) fn socket() -> Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    s.set_recv_buffer_size(4 << 20)?;
    s.set_send_buffer_size(4 << 20)?;
    s.set_nonblocking(true)?;
    s.bind(&loopback().into())?;
    Ok(UdpSocket::from_std(s.into())?)
}

/// A UDP relay on loopback that drops each datagram with probability
/// `loss`, both ways. The client talks to the returned address; the relay
/// forwards to `server` and sends replies back to the last client address
/// it heard from. Dropping the returned guard stops it.
pub(crate) fn relay(server: SocketAddr, loss: f64, seed: u64) -> Result<(SocketAddr, Relay)> {
    use rand::{Rng, SeedableRng};
    let front = Arc::new(socket()?);
    let back = Arc::new(socket()?);
    let front_addr = front.local_addr()?;
    let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let up = {
        let (front, back, client) = (front.clone(), back.clone(), client.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().expect("not poisoned") = Some(from);
                if !rng.gen_bool(loss) {
                    let _ = back.send_to(&buf[..n], server).await;
                }
            }
        })
    };
    let down = tokio::spawn(async move {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ 1);
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, _)) = back.recv_from(&mut buf).await {
            let to = *client.lock().expect("not poisoned");
            if let Some(to) = to {
                if !rng.gen_bool(loss) {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        }
    });
    Ok((front_addr, Relay([up, down])))
}

/// Stops the relay's tasks when dropped.
pub(crate) struct Relay([tokio::task::JoinHandle<()>; 2]);

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
