//! A socket whose driver runs on a runtime of its own keeps acking while
//! the application's runtime is busy (see the README's quickstart).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_utp::{Config, UtpSocket};

/// Binds a socket on a new single-threaded runtime in a thread of its own,
/// which then runs only the socket's driver.
fn socket_on_own_runtime() -> UtpSocket {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (sock, driver) = UtpSocket::bind_with_driver("127.0.0.1:0", Config::default())
                .await
                .unwrap();
            tx.send(sock).unwrap();
            // Ends once every handle on the socket is gone.
            let _ = driver.await;
        });
    });
    rx.recv().unwrap()
}

/// Streams used from the application's runtime (one thread), their
/// sockets' drivers on runtimes of their own: the transfer completes
/// bit-exact, and while a task of the application computes for 600 ms at a
/// time (longer than the minimum retransmission timeout) the drivers go on
/// acking, so no timer fires.
#[tokio::test(flavor = "current_thread")]
async fn drivers_on_their_own_runtime_ack_while_the_application_computes() {
    let (a, b) = (socket_on_own_runtime(), socket_on_own_runtime());
    let listener = b.listen().unwrap();
    let addr = b.local_addr().unwrap();
    let len = 16 << 20;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let mut client = a.connect(addr).await.unwrap();
    let (mut server, _) = listener.accept().await.unwrap();
    let hog = tokio::spawn(async {
        for _ in 0..3 {
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(600));
        }
    });
    let writer = async {
        client.write_all(&data).await.unwrap();
        client.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        got
    };
    let (_, got) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("transfer finished");
    hog.await.unwrap();
    assert!(got == data, "{} bytes, not the data sent", got.len());
    let (c, s) = (client.stats(), server.stats());
    assert_eq!(c.timeouts + s.timeouts, 0, "{c:?}\n{s:?}");
}

/// A driver that stops without finishing (dropped instead of spawned, its
/// task aborted, its runtime shut down) fails what waits on its socket at
/// once: a read, a write, an accept. Before, they waited forever. A stream
/// dropped after it still sends its FIN (the socket itself works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_fail_when_their_driver_is_dropped() {
    let limit = Duration::from_secs(5);
    let listener = tokio_utp::UtpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 16];
        s.read(&mut buf).await
    });

    // Dropped instead of spawned after the handshake.
    let (mut stream, driver) = tokio_utp::UtpStream::connect(addr).await.unwrap();
    let waiting = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        let r = stream.read(&mut buf).await;
        (r.map(|_| ()), stream)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(driver);
    let (read, mut stream) = tokio::time::timeout(limit, waiting)
        .await
        .expect("a waiting read fails once the driver is gone")
        .unwrap();
    assert_eq!(
        read.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionAborted
    );
    let write = tokio::time::timeout(limit, stream.write_all(b"late")).await;
    assert!(write.expect("a write fails at once").is_err());
    drop(stream);
    let eof = tokio::time::timeout(limit, server).await;
    let eof = eof.expect("the FIN of the dropped stream arrives").unwrap();
    assert_eq!(eof.unwrap(), 0, "the server reads the end of the stream");

    // An accept on a socket whose driver task was aborted.
    let (sock, driver) = UtpSocket::bind_with_driver("127.0.0.1:0", Config::default())
        .await
        .unwrap();
    let task = tokio::spawn(driver);
    let listener = sock.listen().unwrap();
    let accepting = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    task.abort();
    let accepted = tokio::time::timeout(limit, accepting).await;
    assert!(accepted.expect("the accept fails").unwrap().is_err());
}
