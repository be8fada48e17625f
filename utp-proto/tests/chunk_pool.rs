//! Send chunks of a connection that finished sending go to the process's
//! pool, and the next connection's writes reuse them (instead of faulting
//! in fresh memory). Alone in its test binary: the pool is process-wide.

mod common;

use std::time::Duration;

use common::{pattern, read_now, write_now, LinkParams, SimNet};
use utp_proto::{pooled_send_memory, Config, State};

const MIB: usize = 1 << 20;

/// Sends `data` on a new connection from endpoint 0, reads it at endpoint 1,
/// closes both sides and runs until both FINs are acknowledged. Returns
/// the pool's size right after the first write was accepted.
fn transfer(net: &mut SimNet, data: &[u8]) -> usize {
    let now = net.now;
    let c = net.eps[0].connect(now, net.addrs[1]).unwrap();
    let (mut written, mut got, mut server) = (0, Vec::new(), None);
    let mut after_first_write = None;
    let mut buf = vec![0u8; 1 << 16];
    net.run(Duration::from_secs(60), 1_000_000, |net| {
        let now = net.now;
        if let Some(h) = net.eps[1].accept() {
            server = Some(h);
        }
        if write_now(&mut net.eps[0], c, now, data, &mut written) > 0 {
            after_first_write.get_or_insert_with(pooled_send_memory);
            if written == data.len() {
                net.eps[0].with_conn(c, now, |cc| cc.close());
            }
        }
        let Some(h) = server else { return false };
        read_now(&mut net.eps[1], h, now, &mut buf, |d| {
            got.extend_from_slice(d)
        });
        if got.len() == data.len() && net.eps[1].conn(h).is_eof() {
            net.eps[1].with_conn(h, now, |cc| cc.close());
        }
        let done = |s: State| matches!(s, State::TimeWait | State::Done);
        done(net.eps[0].conn(c).state()) && done(net.eps[1].conn(h).state())
    });
    assert_eq!(got, data);
    after_first_write.expect("something was written")
}

#[test]
fn a_finished_connections_send_chunks_serve_the_next_one() {
    // No MTU on the path: 64 KiB packets, and chunks of 64 KiB and more.
    let link = LinkParams {
        mtu: None,
        ..LinkParams::clean()
    };
    let mut net = SimNet::new(Config::default(), link, 5);
    let data = pattern(MIB, 1);
    assert_eq!(transfer(&mut net, &data), 0, "nothing pooled before");
    // Our FIN acknowledged: no write can come, so the chunks went at once
    // (not after the idle linger, and not only when TIME_WAIT ends).
    let pooled = pooled_send_memory();
    assert!(pooled >= 64 * 1024, "{pooled} bytes pooled after the first");
    assert!(pooled <= 16 * MIB);
    // The next connection's first write took one of them.
    let after_first_write = transfer(&mut net, &pattern(MIB, 2));
    assert!(
        after_first_write < pooled,
        "{after_first_write} bytes pooled after its first write, {pooled} before"
    );
}
