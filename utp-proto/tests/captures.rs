//! Real libutp / libtorrent datagrams (tests/captures/*.json): the codec must
//! read every one of them exactly as the reference decoder did, and the
//! connection logic must answer replayed conversations the way the wire
//! rules in PROTOCOL.md demand.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{drain, me, peer, Out};
use serde_json::Value;
use utp_proto::packet::{self, Packet, PacketType};
use utp_proto::{Config, Endpoint};

fn capture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/captures")
}

fn load(name: &str) -> Value {
    let path = capture_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn all_captures() -> Vec<(String, Value)> {
    let mut names: Vec<String> = std::fs::read_dir(capture_dir())
        .expect("captures directory")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), load(&n))).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("field {k} missing in {v}"))
}

fn type_name(t: PacketType) -> &'static str {
    match t {
        PacketType::Data => "ST_DATA",
        PacketType::Fin => "ST_FIN",
        PacketType::State => "ST_STATE",
        PacketType::Reset => "ST_RESET",
        PacketType::Syn => "ST_SYN",
    }
}

fn datagrams(v: &Value) -> &Vec<Value> {
    v["datagrams"].as_array().expect("datagrams array")
}

/// Checks one parsed datagram against the reference decoding.
fn check_against_decoded(ctx: &str, raw: &[u8], d: &Value) {
    let p = Packet::parse(raw).unwrap_or_else(|e| panic!("{ctx}: parse failed: {e}"));
    let h = p.header;
    assert_eq!(u(d, "len") as usize, raw.len(), "{ctx}: len");
    assert_eq!(u(d, "ver"), 1, "{ctx}: version");
    assert_eq!(d["type"].as_str().unwrap(), type_name(h.ty), "{ctx}: type");
    assert_eq!(u(d, "conn_id"), h.conn_id as u64, "{ctx}: conn_id");
    assert_eq!(u(d, "ts"), h.timestamp as u64, "{ctx}: ts");
    assert_eq!(u(d, "ts_diff"), h.timestamp_diff as u64, "{ctx}: ts_diff");
    assert_eq!(u(d, "wnd"), h.wnd_size as u64, "{ctx}: wnd");
    assert_eq!(u(d, "seq"), h.seq_nr as u64, "{ctx}: seq");
    assert_eq!(u(d, "ack"), h.ack_nr as u64, "{ctx}: ack");
    assert_eq!(
        u(d, "payload_len") as usize,
        p.payload.len(),
        "{ctx}: payload_len"
    );

    let exts = d["ext"].as_array().expect("ext array");
    let mut want_sack: Option<Vec<u8>> = None;
    let mut want_reason: Option<u16> = None;
    let mut ext_bytes = 0;
    for e in exts {
        let body = unhex(e["hex"].as_str().unwrap());
        assert_eq!(u(e, "len") as usize, body.len(), "{ctx}: ext len");
        ext_bytes += 2 + body.len();
        match u(e, "type") {
            1 => {
                // Cross-check our bit order with the reference decoder's.
                let bits = e["sack_bits"].as_str().unwrap();
                assert_eq!(bits.len(), body.len() * 8, "{ctx}: sack_bits length");
                for (i, c) in bits.chars().enumerate() {
                    assert_eq!(packet::sack_bit(&body, i), c == '1', "{ctx}: sack bit {i}");
                }
                let seqs: Vec<u64> = e["sacked_seqs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_u64().unwrap())
                    .collect();
                let ours: Vec<u64> = (0..body.len() * 8)
                    .filter(|&i| packet::sack_bit(&body, i))
                    .map(|i| h.ack_nr.wrapping_add(2).wrapping_add(i as u16) as u64)
                    .collect();
                assert_eq!(ours, seqs, "{ctx}: sacked seqs");
                assert_eq!(
                    d["sack_bits"].as_str(),
                    Some(bits),
                    "{ctx}: top-level sack_bits"
                );
                want_sack = Some(body);
            }
            3 => {
                want_reason = Some(u(e, "close_reason") as u16);
            }
            t => panic!("{ctx}: unexpected extension {t} in capture"),
        }
    }
    assert_eq!(p.sack.map(<[u8]>::to_vec), want_sack, "{ctx}: sack");
    assert_eq!(p.close_reason, want_reason, "{ctx}: close_reason");
    assert_eq!(
        p.payload,
        &raw[packet::HEADER_LEN + ext_bytes..],
        "{ctx}: payload must start right after the extension chain"
    );
    assert_eq!(raw[1] == 0, exts.is_empty(), "{ctx}: first extension byte");

    // Re-encoding is only defined for "SACK or nothing".
    let only_sack = exts.iter().all(|e| u(e, "type") == 1);
    if only_sack {
        let mut buf = vec![0u8; raw.len() + 64];
        let n = packet::encode(&h, p.sack.unwrap_or(&[]), p.payload, &mut buf);
        assert_eq!(
            n,
            packet::encoded_len(p.sack.map_or(0, <[u8]>::len), p.payload.len())
        );
        assert_eq!(
            &buf[..n],
            raw,
            "{ctx}: re-encoding differs from the wire bytes"
        );
    }
}

#[test]
fn every_captured_datagram_parses_to_its_reference_decoding() {
    let mut total = 0;
    let mut seen_types = std::collections::HashSet::new();
    let mut sacks = 0;
    let mut reasons = 0;
    for (name, v) in all_captures() {
        let dgs = datagrams(&v);
        assert!(!dgs.is_empty(), "{name}: no datagrams");
        for (i, dg) in dgs.iter().enumerate() {
            let ctx = format!("{name} #{i}");
            let raw = unhex(dg["hex"].as_str().unwrap());
            check_against_decoded(&ctx, &raw, &dg["decoded"]);
            let p = Packet::parse(&raw).unwrap();
            seen_types.insert(type_name(p.header.ty));
            sacks += p.sack.is_some() as usize;
            reasons += p.close_reason.is_some() as usize;
            total += 1;
        }
    }
    // The files hold 224 datagrams; make sure none was skipped silently.
    assert_eq!(total, 224, "datagram count across all captures");
    assert_eq!(
        seen_types.len(),
        5,
        "all five packet types occur: {seen_types:?}"
    );
    assert_eq!(sacks, 6, "libutp-libutp-loss has six SACKs");
    assert!(reasons >= 4, "libtorrent's close_reason extension occurs");
}

#[test]
fn rewritten_fin_original_bytes_carry_close_reason_six() {
    let v = load("libutp-to-libtorrent-ltclose-stripped.json");
    let dg = datagrams(&v)
        .iter()
        .find(|d| d.get("original_hex").is_some())
        .expect("one rewritten datagram");
    let forwarded = unhex(dg["hex"].as_str().unwrap());
    let original = unhex(dg["original_hex"].as_str().unwrap());
    let f = Packet::parse(&forwarded).unwrap();
    let o = Packet::parse(&original).unwrap();
    assert_eq!(f.header, o.header, "only the extension was stripped");
    assert_eq!(o.header.ty, PacketType::Fin);
    assert_eq!(o.close_reason, Some(6));
    assert_eq!(f.close_reason, None);
    assert!(o.payload.is_empty() && f.payload.is_empty());
}

#[test]
fn captured_connection_ids_follow_the_r_and_r_plus_one_rule() {
    for (name, v) in all_captures() {
        if name.starts_with("reset-") {
            continue;
        }
        let dgs = datagrams(&v);
        let syn = Out::parse(peer(), &unhex(dgs[0]["hex"].as_str().unwrap()));
        assert_eq!(syn.h.ty, PacketType::Syn, "{name}: starts with SYN");
        let r = syn.h.conn_id;
        for (i, dg) in dgs.iter().enumerate().skip(1) {
            let p = Out::parse(peer(), &unhex(dg["hex"].as_str().unwrap()));
            let want = if dg["from"] == "A" {
                r.wrapping_add(1)
            } else {
                r
            };
            assert_eq!(p.h.conn_id, want, "{name} #{i}");
        }
    }
}

// ------------------------------------------------------------------ replays

/// One side of a capture, fed into our endpoint as if we were the other side.
struct Replay {
    ep: Endpoint,
    now: Instant,
    start: Instant,
}

impl Replay {
    fn listener() -> Self {
        let start = Instant::now();
        let mut ep = Endpoint::with_seed(Arc::new(Config::default()), start, 29);
        ep.set_listening(true);
        Self {
            ep,
            now: start,
            start,
        }
    }

    /// Feeds a captured datagram at its capture time, with its ack_nr
    /// rewritten by `ack` (our sequence space differs from the peer's).
    fn feed(&mut self, dg: &Value, ack: impl FnOnce(u16) -> u16) -> Vec<Out> {
        let mut raw = unhex(dg["hex"].as_str().unwrap());
        let t = Duration::from_micros(u(dg, "t_us"));
        self.now = self.now.max(self.start + t);
        self.ep.handle_timeout(self.now);
        let old = u16::from_be_bytes([raw[18], raw[19]]);
        let is_syn = raw[0] >> 4 == PacketType::Syn as u8;
        if !is_syn {
            raw[18..20].copy_from_slice(&ack(old).to_be_bytes());
        }
        self.ep
            .handle_datagram(self.now, peer(), &raw)
            .expect("captured datagram parses");
        drain(&mut self.ep, self.now)
    }
}

fn from_a(v: &Value) -> Vec<Value> {
    datagrams(v)
        .iter()
        .filter(|d| d["from"] == "A" && d.get("dropped_by_relay").is_none())
        .cloned()
        .collect()
}

#[test]
fn our_receiver_reproduces_libutps_sack_bitmaps_for_the_loss_capture() {
    let v = load("libutp-libutp-loss.json");
    let mut r = Replay::listener();
    let a = from_a(&v);
    assert_eq!(a[0]["decoded"]["type"], "ST_SYN");
    let out = r.feed(&a[0], |x| x);
    assert_eq!(out.len(), 1);
    let synack = &out[0];
    assert_eq!(synack.h.ty, PacketType::State);
    assert_eq!(synack.h.conn_id, 17767);
    assert_eq!(synack.h.ack_nr, 9158);
    let y = synack.h.seq_nr;
    let h = r.ep.accept().expect("accepted");

    // libutp's SACKs from B, in order, keyed by the ack they carried.
    let libutp_sacks: Vec<(u16, Vec<u16>)> = datagrams(&v)
        .iter()
        .filter(|d| d["from"] == "B" && d["decoded"].get("sack_bits").is_some())
        .map(|d| {
            let p = Out::parse(me(), &unhex(d["hex"].as_str().unwrap()));
            (p.h.ack_nr, p.sacked_seqs())
        })
        .collect();
    assert_eq!(libutp_sacks.len(), 6);

    let mut ours: Vec<(u16, Vec<u16>)> = Vec::new();
    let mut received = Vec::new();
    let mut last_ack = 0;
    for dg in &a[1..] {
        // A's acks refer to libutp's numbering (17766 = Y-1, 17767 = B's FIN);
        // B here sends nothing, so every ack means "nothing of yours yet".
        let out = r.feed(dg, |_| y.wrapping_sub(1));
        for o in &out {
            assert_eq!(o.h.ty, PacketType::State, "we only ack");
            assert_eq!(o.h.conn_id, 17767);
            assert_eq!(o.h.seq_nr, y, "ST_STATE carries our next unused seq");
            if let Some(s) = &o.sack {
                assert_eq!(s.len() % 4, 0, "SACK length is a multiple of 4");
                ours.push((o.h.ack_nr, o.sacked_seqs()));
            }
            last_ack = o.h.ack_nr;
        }
        let mut buf = vec![0u8; 65536];
        loop {
            let n = r.ep.with_conn(h, r.now, |c| c.read(&mut buf)).unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
        }
    }
    // Our receiver acks every packet, libutp coalesced some acks: every SACK
    // libutp sent must be one we sent too, in the same order.
    let mut it = ours.iter();
    for want in &libutp_sacks {
        assert!(
            it.any(|o| o == want),
            "libutp's SACK {want:?} missing from ours {ours:?}"
        );
    }
    assert_eq!(last_ack, 9171, "FIN acked");
    let conn = r.ep.conn(h);
    assert!(conn.is_eof());

    // The stream is A's distinct DATA payloads in sequence order.
    let mut by_seq = std::collections::BTreeMap::new();
    for dg in datagrams(&v).iter().filter(|d| d["from"] == "A") {
        let p = Out::parse(peer(), &unhex(dg["hex"].as_str().unwrap()));
        if p.h.ty == PacketType::Data {
            by_seq.insert(p.h.seq_nr, p.payload);
        }
    }
    let want: Vec<u8> = by_seq.into_values().flatten().collect();
    assert_eq!(want.len(), 16384);
    assert_eq!(received, want);
}

/// Replays initiator A of a libtorrent capture into our listener (which
/// sends no data) and returns the endpoint, handle, what we sent and read.
fn replay_libtorrent_initiator(
    file: &str,
    close_after_reading: bool,
) -> (Replay, utp_proto::ConnHandle, Vec<Out>, Vec<u8>, Value) {
    let v = load(file);
    let a = from_a(&v);
    let mut r = Replay::listener();
    let out = r.feed(&a[0], |x| x);
    let syn = Out::parse(peer(), &unhex(a[0]["hex"].as_str().unwrap())).h;
    assert_eq!(syn.wnd_size, 0, "libtorrent SYNs advertise window 0");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].h.ty, PacketType::State);
    assert_eq!(out[0].h.conn_id, syn.conn_id);
    assert_eq!(out[0].h.ack_nr, syn.seq_nr);
    let y = out[0].h.seq_nr;
    let h = r.ep.accept().expect("accepted");
    let mut sent = out;
    let mut received = Vec::new();
    let mut our_fin: Option<u16> = None;
    for dg in &a[1..] {
        let is_fin = dg["decoded"]["type"] == "ST_FIN";
        if is_fin && close_after_reading && our_fin.is_none() {
            // Close our direction before the peer's FIN, as libutp did.
            r.ep.with_conn(h, r.now, |c| c.close());
            let out = drain(&mut r.ep, r.now);
            let fin = out
                .iter()
                .find(|o| o.h.ty == PacketType::Fin)
                .expect("our FIN");
            assert_eq!(fin.h.seq_nr, y, "a FIN without prior data takes Y itself");
            our_fin = Some(fin.h.seq_nr);
            sent.extend(out);
        }
        let fin = our_fin;
        let out = r.feed(dg, |_| fin.unwrap_or(y.wrapping_sub(1)));
        sent.extend(out);
        let mut buf = vec![0u8; 65536];
        loop {
            let n = r.ep.with_conn(h, r.now, |c| c.read(&mut buf)).unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
        }
    }
    (r, h, sent, received, v)
}

fn a_stream(v: &Value) -> Vec<u8> {
    let mut by_seq = std::collections::BTreeMap::new();
    for dg in datagrams(v).iter().filter(|d| d["from"] == "A") {
        let p = Out::parse(peer(), &unhex(dg["hex"].as_str().unwrap()));
        if p.h.ty == PacketType::Data {
            by_seq.insert(p.h.seq_nr, p.payload);
        }
    }
    by_seq.into_values().flatten().collect()
}

#[test]
fn libtorrent_initiator_with_zero_window_syn_is_served_and_its_fin_acked() {
    let (r, h, sent, received, v) = replay_libtorrent_initiator("libtorrent-to-libutp.json", true);
    assert_eq!(received, a_stream(&v));
    assert!(received.starts_with(b"\x13BitTorrent protocol"));
    let conn = r.ep.conn(h);
    assert!(conn.is_eof(), "libtorrent's FIN gives EOF");
    assert!(conn.is_fin_acked(), "libtorrent's FIN acks ours");
    // libtorrent's FIN (seq 38523) and its retransmission are both acked.
    let fin_acks = sent
        .iter()
        .filter(|o| o.h.ty == PacketType::State && o.h.ack_nr == 38523)
        .count();
    assert!(fin_acks >= 2, "the re-sent FIN is acked again ({fin_acks})");
    // Every data packet got an ack for exactly the data received in order.
    assert!(sent.iter().any(|o| o.h.ack_nr == 38522));
    assert_eq!(conn.stats().duplicates_received, 1, "only the re-sent FIN");
}

#[test]
fn libtorrent_fin_with_close_reason_is_acked_and_reason_surfaced() {
    let (r, h, sent, received, v) =
        replay_libtorrent_initiator("libtorrent-libtorrent.json", false);
    assert_eq!(received, a_stream(&v));
    let conn = r.ep.conn(h);
    assert!(conn.is_eof());
    assert_eq!(conn.stats().peer_close_reason, Some(6));
    // Unlike libutp, we ack the FIN that carries extension 3.
    let last = sent.last().unwrap();
    assert_eq!(last.h.ty, PacketType::State);
    assert_eq!(last.h.ack_nr, 63528);
}

#[test]
fn probes_from_the_reset_capture_get_libutp_shaped_resets_and_resets_get_none() {
    let v = load("reset-libutp.json");
    let start = Instant::now();
    let mut ep = Endpoint::with_seed(Arc::new(Config::default()), start, 7);
    ep.set_listening(true);
    let dgs = datagrams(&v);
    let mut answered = 0;
    for (i, dg) in dgs.iter().enumerate() {
        if dg["from"] != "A" {
            continue;
        }
        let now = start + Duration::from_micros(u(dg, "t_us"));
        let raw = unhex(dg["hex"].as_str().unwrap());
        let probe = Out::parse(me(), &raw).h;
        ep.handle_datagram(now, peer(), &raw).unwrap();
        let out = drain(&mut ep, now);
        // libutp's answer, if any, is the next datagram from B.
        let theirs = dgs
            .get(i + 1)
            .filter(|d| d["from"] == "B")
            .map(|d| Out::parse(peer(), &unhex(d["hex"].as_str().unwrap())));
        match theirs {
            None => {
                assert_eq!(probe.ty, PacketType::Reset);
                assert!(out.is_empty(), "a RESET is never answered: {out:?}");
            }
            Some(t) => {
                assert_eq!(out.len(), 1, "#{i}: exactly one reply");
                let o = &out[0];
                assert_eq!(o.to, peer());
                assert_eq!(o.raw.len(), 20, "#{i}: bare 20-byte RESET");
                assert_eq!(o.h.ty, t.h.ty);
                assert_eq!(o.h.conn_id, t.h.conn_id, "#{i}: probe's id echoed");
                assert_eq!(o.h.ack_nr, t.h.ack_nr, "#{i}: probe's seq acked");
                assert_eq!(o.h.wnd_size, 0);
                assert_eq!(o.h.timestamp_diff, 0);
                answered += 1;
            }
        }
    }
    assert_eq!(answered, 3);
    assert_eq!(ep.connection_count(), 0, "probes open no connection");
    assert_eq!(ep.stats().resets_sent, 3);
}
