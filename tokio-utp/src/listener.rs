//! `UtpListener`: accepts incoming uTP connections on a socket.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::net::ToSocketAddrs;
use utp_proto::Config;

use crate::socket::{ConnWakers, UtpSocket};
use crate::stream::UtpStream;

/// Accepts incoming connections. Created by [`UtpListener::bind`] or
/// [`UtpSocket::listen`]; the same socket can still open outgoing
/// connections. Dropping the listener stops accepting (new SYNs are refused).
#[derive(Debug)]
pub struct UtpListener {
    socket: UtpSocket,
}

impl UtpListener {
    pub(crate) fn new(socket: UtpSocket) -> Self {
        Self { socket }
    }

    /// Binds a new socket with the default [`Config`] (spawning its driver)
    /// and listens on it.
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Self::bind_with_config(addr, Config::default()).await
    }

    /// Binds with a custom configuration and listens.
    pub async fn bind_with_config(addr: impl ToSocketAddrs, config: Config) -> io::Result<Self> {
        UtpSocket::bind_with_config(addr, config).await?.listen()
    }

    /// The socket this listener accepts on (usable for outgoing connections).
    pub fn socket(&self) -> &UtpSocket {
        &self.socket
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Waits for the next incoming connection.
    pub async fn accept(&self) -> io::Result<(UtpStream, SocketAddr)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next incoming connection.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(UtpStream, SocketAddr)>> {
        let shared = &self.socket.shared;
        let mut inner = shared.lock();
        if let Some(h) = inner.endpoint.accept() {
            inner.wakers.insert(h, ConnWakers::default());
            // The route's MTU caps this connection's path MTU search.
            let peer = inner.endpoint.peer_addr(h);
            if let Some(max) = shared.route_max_datagram(peer) {
                inner.endpoint.set_max_datagram(h, Instant::now(), max);
            }
            // A peer held up by the backlog's smaller window is told of
            // the whole one (see `Config::backlog_recv_buffer`).
            inner.wake_driver_if_needed();
            drop(inner);
            let stream = UtpStream::new(shared.clone(), h);
            let peer = stream.peer_addr()?;
            return Poll::Ready(Ok((stream, peer)));
        }
        if let Some(kind) = inner.driver_gone {
            return Poll::Ready(Err(io::Error::new(kind, "uTP socket driver stopped")));
        }
        inner.accept_waiters.register(cx.waker());
        Poll::Pending
    }

    /// A `Stream` of incoming connections.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }
}

impl Drop for UtpListener {
    fn drop(&mut self) {
        let mut inner = self.socket.shared.lock();
        inner.listening = false;
        inner.endpoint.set_listening(false);
        inner.accept_waiters.wake_all();
        // Connections nobody will accept are closed gracefully.
        let now = Instant::now();
        while let Some(h) = inner.endpoint.accept() {
            inner.endpoint.release(h, now);
        }
        inner.wake_driver_if_needed();
    }
}

/// Stream of incoming connections from [`UtpListener::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a UtpListener,
}

impl futures_core::Stream for Incoming<'_> {
    type Item = io::Result<UtpStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.listener
            .poll_accept(cx)
            .map(|r| Some(r.map(|(s, _)| s)))
    }
}
