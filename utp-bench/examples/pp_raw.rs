use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn tcp(rounds: usize) -> f64 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut c, _) = l.accept().await.unwrap();
        c.set_nodelay(true).unwrap();
        let mut b = [0u8; 64];
        while c.read_exact(&mut b).await.is_ok() {
            c.write_all(&b).await.unwrap();
        }
    });
    let mut c = tokio::net::TcpStream::connect(a).await.unwrap();
    c.set_nodelay(true).unwrap();
    let mut v = Vec::new();
    let mut b = [0u8; 64];
    for i in 0..rounds + 20 {
        let t = Instant::now();
        c.write_all(&b.clone()).await.unwrap();
        c.read_exact(&mut b).await.unwrap();
        if i >= 20 {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn udp(rounds: usize, connected: bool) -> f64 {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sa = s.local_addr().unwrap();
    let ca = c.local_addr().unwrap();
    if connected {
        s.connect(ca).await.unwrap();
        c.connect(sa).await.unwrap();
    }
    tokio::spawn(async move {
        let mut b = [0u8; 2048];
        loop {
            let (n, from) = s.recv_from(&mut b).await.unwrap();
            if n == 1 {
                break;
            }
            s.send_to(&b[..n], from).await.unwrap();
        }
    });
    let mut v = Vec::new();
    let mut b = [0u8; 2048];
    for i in 0..rounds + 20 {
        let t = Instant::now();
        c.send_to(&[7u8; 84], sa).await.unwrap();
        c.recv_from(&mut b).await.unwrap();
        if i >= 20 {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    c.send_to(&[1], sa).await.unwrap();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn udp_hop(rounds: usize) -> f64 {
    use std::sync::{Arc, Mutex};
    use tokio::sync::Notify;
    type Q = Arc<(
        Mutex<std::collections::VecDeque<(Vec<u8>, std::net::SocketAddr)>>,
        Notify,
    )>;
    fn driver(s: Arc<tokio::net::UdpSocket>, q: Q) {
        tokio::spawn(async move {
            let mut b = [0u8; 2048];
            loop {
                let Ok((n, from)) = s.recv_from(&mut b).await else {
                    break;
                };
                q.0.lock().unwrap().push_back((b[..n].to_vec(), from));
                q.1.notify_one();
            }
        });
    }
    async fn pop(q: &Q) -> (Vec<u8>, std::net::SocketAddr) {
        loop {
            if let Some(x) = q.0.lock().unwrap().pop_front() {
                return x;
            }
            q.1.notified().await;
        }
    }
    let s = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let c = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let sa = s.local_addr().unwrap();
    let sq: Q = Default::default();
    let cq: Q = Default::default();
    driver(s.clone(), sq.clone());
    driver(c.clone(), cq.clone());
    tokio::spawn(async move {
        loop {
            let (d, from) = pop(&sq).await;
            if d.len() == 1 {
                break;
            }
            s.send_to(&d, from).await.unwrap();
        }
    });
    let mut v = Vec::new();
    for i in 0..rounds + 20 {
        let t = Instant::now();
        c.send_to(&[7u8; 84], sa).await.unwrap();
        pop(&cq).await;
        if i >= 20 {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    c.send_to(&[1], sa).await.unwrap();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..5 {
            let r: usize = std::env::var("R")
                .map(|v| v.parse().unwrap())
                .unwrap_or(5000);
            let t = tcp(r).await;
            let u = udp(r, false).await;
            let uc = udp_hop(r).await;
            println!(
                "tcp {t:.1} udp {u:.1} ({:.2}x) udp-hop {uc:.1} ({:.2}x)",
                u / t,
                uc / t
            );
        }
    });
}
