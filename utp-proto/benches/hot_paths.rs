//! Micro-benchmarks of the per-packet hot paths: header parse and
//! serialise, the send path, ack and SACK processing, the reorder buffer.
//!
//! Run with `cargo bench -p utp-proto --bench hot_paths`. Two endpoints talk
//! through memory in a fixed virtual time, so only the protocol's own work is
//! measured (no sockets, no clock reads).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use utp_proto::packet::{self, Header, Packet, PacketType};
use utp_proto::{Config, ConnHandle, Endpoint};

const BUF: usize = 70_000;

fn a() -> SocketAddr {
    "127.0.0.1:1".parse().expect("address")
}
fn b() -> SocketAddr {
    "127.0.0.1:2".parse().expect("address")
}

/// Two endpoints with one established connection from `client` to `server`.
struct Pair {
    now: Instant,
    client: Endpoint,
    server: Endpoint,
    ch: ConnHandle,
    sh: ConnHandle,
    buf: Vec<u8>,
}

impl Pair {
    fn new() -> Self {
        let now = Instant::now();
        // A send buffer large enough for the biggest burst below.
        let cfg = Arc::new(Config::default().send_buffer(4 << 20).recv_buffer(4 << 20));
        let mut client = Endpoint::with_seed(cfg.clone(), now, 1);
        let mut server = Endpoint::with_seed(cfg, now, 2);
        server.set_listening(true);
        let ch = client.connect(now, b()).expect("free id");
        let mut p = Self {
            now,
            client,
            server,
            ch,
            sh: ConnHandle(usize::MAX),
            buf: vec![0; BUF],
        };
        p.exchange();
        p.sh = p.server.accept().expect("accepted");
        // The responder is established once the initiator speaks.
        p.client_write(&[1]);
        p.exchange();
        let mut one = [0u8; 1];
        p.server
            .with_conn(p.sh, p.now, |c| c.read(&mut one))
            .expect("read");
        p.warm_up();
        p
    }

    /// Grows the congestion window until a 64-packet burst goes out whole.
    fn warm_up(&mut self) {
        for _ in 0..100 {
            let sent = self.round(64);
            if sent >= 64 {
                return;
            }
        }
        panic!("the congestion window never opened to 64 packets");
    }

    /// One steady-state round: write 64 packets' worth, deliver what goes
    /// out, read it, deliver the acks. Returns the data packets sent.
    fn round(&mut self, packets: usize) -> usize {
        let burst = self.send_burst(packets);
        for d in &burst {
            self.server
                .handle_datagram(self.now, a(), d)
                .expect("valid uTP");
        }
        self.server_read_all();
        self.exchange();
        self.server_read_all();
        burst.len()
    }

    fn tick(&mut self) {
        self.now += Duration::from_micros(100);
    }

    fn client_write(&mut self, data: &[u8]) {
        let n = self
            .client
            .with_conn(self.ch, self.now, |c| c.write(data))
            .expect("write");
        assert_eq!(n, data.len(), "send buffer too small for the benchmark");
    }

    /// Datagrams `from` would send now.
    fn drain(ep: &mut Endpoint, now: Instant, buf: &mut [u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(t) = ep.poll_transmit(now, buf) {
            out.push(buf[..t.len].to_vec());
        }
        out
    }

    /// Delivers everything both ways until both sides are quiet.
    fn exchange(&mut self) {
        for _ in 0..100 {
            self.tick();
            let c2s = Self::drain(&mut self.client, self.now, &mut self.buf);
            for d in &c2s {
                self.server
                    .handle_datagram(self.now, a(), d)
                    .expect("valid uTP");
            }
            self.tick();
            let s2c = Self::drain(&mut self.server, self.now, &mut self.buf);
            for d in &s2c {
                self.client
                    .handle_datagram(self.now, b(), d)
                    .expect("valid uTP");
            }
            if c2s.is_empty() && s2c.is_empty() {
                return;
            }
        }
        panic!("endpoints never went quiet");
    }

    fn server_read_all(&mut self) {
        let mut sink = vec![0u8; 1 << 16];
        while self
            .server
            .with_conn(self.sh, self.now, |c| c.read(&mut sink))
            .expect("read")
            > 0
        {}
    }

    /// Sends `packets` full data packets; returns the data datagrams (the
    /// server has not seen them).
    fn send_burst(&mut self, packets: usize) -> Vec<Vec<u8>> {
        let payload = Config::default().payload_size();
        self.client_write(&vec![7u8; packets * payload]);
        self.tick();
        Self::drain(&mut self.client, self.now, &mut self.buf)
    }
}

fn codec(c: &mut Criterion) {
    let h = Header {
        ty: PacketType::Data,
        conn_id: 1234,
        timestamp: 1,
        timestamp_diff: 2,
        wnd_size: 1 << 20,
        seq_nr: 100,
        ack_nr: 50,
    };
    let payload = vec![0xabu8; 1400];
    let sack = [0xffu8, 0, 0x0f, 0];
    let mut buf = vec![0u8; 2048];
    let n = packet::encode(&h, &sack, &payload, &mut buf);
    let wire = buf[..n].to_vec();

    let mut g = c.benchmark_group("packet");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse data+sack", |bch| {
        bch.iter(|| Packet::parse(black_box(&wire)).expect("valid"))
    });
    g.bench_function("encode data 1400 B", |bch| {
        bch.iter(|| packet::encode(black_box(&h), &[], black_box(&payload), &mut buf))
    });
    g.finish();
}

fn paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("connection");

    // Send path: write, packetize, encode one full data packet (acks keep
    // the window open; they are delivered outside the timed part).
    g.throughput(Throughput::Elements(64));
    g.bench_function("send path, 64 packets", |bch| {
        bch.iter_batched_ref(
            Pair::new,
            |p| {
                let burst = p.send_burst(64);
                assert_eq!(burst.len(), 64);
                burst
            },
            BatchSize::SmallInput,
        )
    });

    // Receive path: 64 in-order data packets into the receive buffer, then
    // the one ack they produce.
    g.bench_function("receive path, 64 packets + ack", |bch| {
        bch.iter_batched_ref(
            || {
                let mut p = Pair::new();
                let burst = p.send_burst(64);
                (p, burst)
            },
            |(p, burst)| {
                for d in burst.iter() {
                    p.server.handle_datagram(p.now, a(), d).expect("valid");
                }
                p.server.poll_transmit(p.now, &mut p.buf).expect("an ack")
            },
            BatchSize::SmallInput,
        )
    });

    // Ack processing: one cumulative ack covering 64 packets in flight.
    g.bench_function("ack of 64 packets", |bch| {
        bch.iter_batched_ref(
            || {
                let mut p = Pair::new();
                let burst = p.send_burst(64);
                for d in &burst {
                    p.server.handle_datagram(p.now, a(), d).expect("valid");
                }
                p.tick();
                let acks = Pair::drain(&mut p.server, p.now, &mut p.buf);
                (p, acks)
            },
            |(p, acks)| {
                for d in acks.iter() {
                    p.client.handle_datagram(p.now, b(), d).expect("valid");
                }
            },
            BatchSize::SmallInput,
        )
    });

    // SACK processing: the first of 64 packets lost; the ack for the other
    // 63 carries a SACK bitmask, which marks them and triggers the resend.
    g.bench_function("sack of 63 packets after a loss", |bch| {
        bch.iter_batched_ref(
            || {
                let mut p = Pair::new();
                let burst = p.send_burst(64);
                for d in &burst[1..] {
                    p.server.handle_datagram(p.now, a(), d).expect("valid");
                }
                p.tick();
                let acks = Pair::drain(&mut p.server, p.now, &mut p.buf);
                assert!(acks
                    .iter()
                    .any(|d| Packet::parse(d).expect("valid").sack.is_some()));
                (p, acks)
            },
            |(p, acks)| {
                for d in acks.iter() {
                    p.client.handle_datagram(p.now, b(), d).expect("valid");
                }
            },
            BatchSize::SmallInput,
        )
    });

    // Reorder buffer: 63 packets held behind a hole; the missing one
    // arrives and all 64 move to the reader in order.
    g.bench_function("reorder buffer, hole filled behind 63", |bch| {
        bch.iter_batched_ref(
            || {
                let mut p = Pair::new();
                let burst = p.send_burst(64);
                for d in &burst[1..] {
                    p.server.handle_datagram(p.now, a(), d).expect("valid");
                }
                (p, burst)
            },
            |(p, burst)| {
                p.server
                    .handle_datagram(p.now, a(), &burst[0])
                    .expect("valid");
            },
            BatchSize::SmallInput,
        )
    });

    // Steady state end to end: 64 packets out, in, read, acked.
    g.bench_function("bulk round, 64 packets", |bch| {
        let mut p = Pair::new();
        bch.iter(|| p.round(64))
    });
    g.finish();
}

criterion_group!(benches, codec, paths);
criterion_main!(benches);
