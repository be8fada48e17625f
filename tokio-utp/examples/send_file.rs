//! Send a file over uTP to `recv_file`.
//!
//! ```text
//! cargo run -p tokio-utp --release --example recv_file -- 127.0.0.1:4000 copy.bin
//! cargo run -p tokio-utp --release --example send_file -- 127.0.0.1:4000 original.bin
//! ```

use std::io;
use std::time::Instant;

use tokio::io::BufReader;
use tokio_utp::UtpStream;

#[tokio::main]
async fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, path] = args.as_slice() else {
        eprintln!("usage: send_file HOST:PORT FILE");
        std::process::exit(2);
    };

    let file = tokio::fs::File::open(path).await?;
    let mut file = BufReader::with_capacity(256 * 1024, file);

    let (mut stream, driver) = UtpStream::connect(addr.as_str()).await?;
    tokio::spawn(driver);
    let start = Instant::now();
    let bytes = tokio::io::copy_buf(&mut file, &mut stream).await?;
    // FIN, and wait until the receiver has acknowledged everything.
    let stats = stream.stats();
    stream.close().await?;
    let secs = start.elapsed().as_secs_f64();

    println!(
        "sent {bytes} bytes to {addr} in {secs:.3} s ({:.1} MB/s, {} packets retransmitted)",
        bytes as f64 / 1e6 / secs.max(1e-9),
        stats.packets_retransmitted
    );
    Ok(())
}
