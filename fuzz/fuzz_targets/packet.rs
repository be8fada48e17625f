//! The packet parser on arbitrary bytes: never panics, and whatever parses
//! re-encodes to a packet that parses to the same header, SACK and payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use utp_proto::packet::{encode, encoded_len, Packet};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::parse(data) else {
        return;
    };
    // Our encoder only writes SACKs of up to 255 bytes (one length byte).
    let sack = p.sack.unwrap_or(&[]);
    let mut buf = vec![0u8; encoded_len(sack.len(), p.payload.len())];
    let n = encode(&p.header, sack, p.payload, &mut buf);
    let q = Packet::parse(&buf[..n]).expect("our own encoding parses");
    assert_eq!(q.header, p.header);
    assert_eq!(q.payload, p.payload);
    assert_eq!(q.sack, p.sack);
});
