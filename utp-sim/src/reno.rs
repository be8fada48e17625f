//! A loss-based reference flow (TCP NewReno with SACK-style loss detection),
//! the kind of traffic LEDBAT must yield to. It is a model, not a TCP: it
//! moves numbered segments, acks each one with the cumulative ack plus the
//! segment that triggered it, and echoes send times for RTT samples.

use std::collections::{BTreeSet, VecDeque};

/// Virtual nanoseconds.
pub type Nanos = u64;

/// Payload bytes per segment (a 1500-byte Ethernet MTU minus 52 bytes of
/// IP and TCP headers with timestamps).
pub const MSS: usize = 1448;
/// Bytes on the wire per data segment and per ack.
pub const DATA_WIRE: usize = 1500;
/// Bytes on the wire per ack.
pub const ACK_WIRE: usize = 64;

/// One segment or ack of the model.
#[derive(Debug, Clone, Copy)]
pub enum Segment {
    /// Data segment `seq`, sent at `sent` (sender's virtual time).
    Data {
        /// Segment number.
        seq: u64,
        /// Send time, echoed in the ack.
        sent: Nanos,
    },
    /// Ack: everything below `cum` arrived, and so did `seq`.
    Ack {
        /// Next segment expected.
        cum: u64,
        /// The segment that triggered this ack.
        seq: u64,
        /// Its send time.
        echo: Nanos,
    },
}

#[derive(Debug, Clone)]
struct Seg {
    seq: u64,
    /// Transmission counter at its latest (re)transmission.
    tx: u64,
    sacked: bool,
    lost: bool,
}

/// The sending side.
#[derive(Debug)]
pub struct RenoSender {
    cwnd: f64,
    ssthresh: f64,
    next_seq: u64,
    /// Segments from the oldest unacked one on.
    segs: VecDeque<Seg>,
    /// Transmissions so far, and the latest one known delivered: a segment
    /// is lost once one sent three transmissions after it arrived (so a
    /// retransmission is not declared lost again by old evidence).
    tx_count: u64,
    largest_acked_tx: Option<u64>,
    recover: Option<u64>,
    srtt: Option<f64>,
    rttvar: f64,
    backoff: u32,
    /// Retransmission deadline.
    pub rto_at: Option<Nanos>,
    /// No new data once stopped (the flow left).
    pub stopped: bool,
    /// Segments retransmitted.
    pub retransmits: u64,
    /// Timeouts.
    pub timeouts: u64,
}

impl Default for RenoSender {
    fn default() -> Self {
        Self::new()
    }
}

impl RenoSender {
    /// A sender in slow start with an initial window of 10 segments.
    pub fn new() -> Self {
        Self {
            cwnd: 10.0,
            ssthresh: f64::INFINITY,
            next_seq: 0,
            segs: VecDeque::new(),
            tx_count: 0,
            largest_acked_tx: None,
            recover: None,
            srtt: None,
            rttvar: 0.0,
            backoff: 0,
            rto_at: None,
            stopped: false,
            retransmits: 0,
            timeouts: 0,
        }
    }

    /// Congestion window in bytes.
    pub fn window_bytes(&self) -> usize {
        (self.cwnd * MSS as f64) as usize
    }

    fn una(&self) -> u64 {
        self.segs.front().map_or(self.next_seq, |s| s.seq)
    }

    fn pipe(&self) -> usize {
        self.segs.iter().filter(|s| !s.sacked && !s.lost).count()
    }

    fn rto(&self) -> Nanos {
        let base = match self.srtt {
            None => 1e9,
            Some(s) => (s + 4.0 * self.rttvar).max(200e6),
        };
        (base * f64::from(1u32 << self.backoff.min(6))) as Nanos
    }

    /// Handles an ack.
    pub fn on_ack(&mut self, now: Nanos, cum: u64, seq: u64, echo: Nanos) {
        let sample = now.saturating_sub(echo) as f64;
        match self.srtt {
            None => {
                self.srtt = Some(sample);
                self.rttvar = sample / 2.0;
            }
            Some(s) => {
                self.rttvar = 0.75 * self.rttvar + 0.25 * (s - sample).abs();
                self.srtt = Some(0.875 * s + 0.125 * sample);
            }
        }
        let mut newly = 0usize;
        let advanced = cum > self.una();
        let mut acked_tx = self.largest_acked_tx;
        while self.segs.front().is_some_and(|s| s.seq < cum) {
            let s = self.segs.pop_front().expect("checked");
            if !s.sacked {
                newly += 1;
                acked_tx = acked_tx.max(Some(s.tx));
            }
        }
        let una = self.una();
        if seq >= una {
            if let Some(s) = self.segs.get_mut((seq - una) as usize) {
                if !s.sacked {
                    s.sacked = true;
                    s.lost = false;
                    newly += 1;
                    acked_tx = acked_tx.max(Some(s.tx));
                }
            }
        }
        self.largest_acked_tx = acked_tx;
        if advanced {
            self.backoff = 0;
            self.rto_at = (!self.segs.is_empty()).then(|| now + self.rto());
        }
        if self.recover.is_some_and(|r| cum >= r) {
            self.recover = None;
        }
        // Loss: three segments above it were delivered (the SACK rule).
        let mut lost_any = false;
        if let Some(h) = self.largest_acked_tx {
            for s in self.segs.iter_mut() {
                if !s.sacked && !s.lost && s.tx + 3 <= h {
                    s.lost = true;
                    lost_any = true;
                }
            }
        }
        if lost_any && self.recover.is_none() {
            self.cwnd = (self.cwnd / 2.0).max(2.0);
            self.ssthresh = self.cwnd;
            self.recover = Some(self.next_seq);
        } else if self.recover.is_none() {
            for _ in 0..newly {
                if self.cwnd < self.ssthresh {
                    self.cwnd += 1.0;
                } else {
                    self.cwnd += 1.0 / self.cwnd;
                }
            }
        }
    }

    /// The retransmission timer fired.
    pub fn on_timeout(&mut self, now: Nanos) {
        if self.segs.is_empty() {
            self.rto_at = None;
            return;
        }
        self.timeouts += 1;
        self.ssthresh = (self.cwnd / 2.0).max(2.0);
        self.cwnd = 1.0;
        for s in self.segs.iter_mut().filter(|s| !s.sacked) {
            s.lost = true;
        }
        self.recover = Some(self.next_seq);
        self.backoff += 1;
        self.rto_at = Some(now + self.rto());
    }

    /// Next segment to send now, if the window allows one.
    pub fn poll_send(&mut self, now: Nanos) -> Option<Segment> {
        if self.pipe() as f64 >= self.cwnd.floor().max(1.0) {
            return None;
        }
        let tx = self.tx_count;
        let seq = if let Some(s) = self.segs.iter_mut().find(|s| s.lost) {
            s.lost = false;
            s.tx = tx;
            self.retransmits += 1;
            s.seq
        } else if !self.stopped {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.segs.push_back(Seg {
                seq,
                tx,
                sacked: false,
                lost: false,
            });
            seq
        } else {
            return None;
        };
        self.tx_count += 1;
        if self.rto_at.is_none() {
            self.rto_at = Some(now + self.rto());
        }
        Some(Segment::Data { seq, sent: now })
    }
}

/// The receiving side.
#[derive(Debug, Default)]
pub struct RenoReceiver {
    next: u64,
    out_of_order: BTreeSet<u64>,
    /// Payload bytes delivered in order.
    pub delivered: u64,
}

impl RenoReceiver {
    /// Handles a data segment; returns the ack to send.
    pub fn on_data(&mut self, seq: u64, sent: Nanos) -> Segment {
        if seq == self.next {
            self.next += 1;
            self.delivered += MSS as u64;
            while self.out_of_order.remove(&self.next) {
                self.next += 1;
                self.delivered += MSS as u64;
            }
        } else if seq > self.next {
            self.out_of_order.insert(seq);
        }
        Segment::Ack {
            cum: self.next,
            seq,
            echo: sent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_of_one_segment_halves_once_and_retransmits_it() {
        let mut s = RenoSender::new();
        let mut r = RenoReceiver::default();
        let mut sent = Vec::new();
        while let Some(seg) = s.poll_send(0) {
            sent.push(seg);
        }
        assert_eq!(sent.len(), 10);
        // Segment 2 is lost; the rest arrive.
        for seg in sent {
            let Segment::Data { seq, sent } = seg else {
                unreachable!()
            };
            if seq == 2 {
                continue;
            }
            let Segment::Ack { cum, seq, echo } = r.on_data(seq, sent) else {
                unreachable!()
            };
            s.on_ack(1_000_000, cum, seq, echo);
        }
        assert_eq!(
            s.window_bytes(),
            7 * MSS,
            "10 + 4 grown in slow start, then halved once"
        );
        let Some(Segment::Data { seq, .. }) = s.poll_send(1_000_000) else {
            panic!("expected the retransmission")
        };
        assert_eq!(seq, 2);
        assert_eq!(s.retransmits, 1);
        let Segment::Ack { cum, .. } = r.on_data(2, 0) else {
            unreachable!()
        };
        assert_eq!(cum, 10);
        assert_eq!(r.delivered, 10 * MSS as u64);
    }
}
