//! Receive one file over uTP from `send_file` and write it to a path.
//! `read_chunk` hands over the received bytes as they sit in the receive
//! buffers, without copying them into a buffer of ours first.
//!
//! ```text
//! cargo run -p tokio-utp --release --example recv_file -- 127.0.0.1:4000 copy.bin
//! cargo run -p tokio-utp --release --example send_file -- 127.0.0.1:4000 original.bin
//! ```

use std::io;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio_utp::UtpListener;

#[tokio::main]
async fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, path] = args.as_slice() else {
        eprintln!("usage: recv_file HOST:PORT OUTPUT_FILE");
        std::process::exit(2);
    };

    let listener = UtpListener::bind(addr.as_str()).await?;
    println!("waiting for a sender on {}", listener.local_addr()?);
    let (mut stream, peer) = listener.accept().await?;
    drop(listener);

    let mut file = tokio::fs::File::create(path).await?;
    let start = Instant::now();
    // Everything up to the sender's FIN.
    let mut bytes = 0u64;
    while let Some(chunk) = stream.read_chunk(usize::MAX).await? {
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    file.sync_all().await?;
    let secs = start.elapsed().as_secs_f64();

    println!(
        "received {bytes} bytes from {peer} into {path} in {secs:.3} s ({:.1} MB/s)",
        bytes as f64 / 1e6 / secs.max(1e-9)
    );
    Ok(())
}
