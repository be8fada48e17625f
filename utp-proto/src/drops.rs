//! Counters of packets a connection ignored, one per reason.
//!
//! Every check on what a peer sends ends in one of these counters, so an
//! operator can tell a hostile or broken peer from a lossy path. A
//! [`Connection`](crate::Connection) keeps its own; the
//! [`Endpoint`](crate::Endpoint) sums them over every connection it ever had
//! in [`EndpointStats::connection_drops`](crate::EndpointStats::connection_drops).

use std::ops::AddAssign;

/// Packets (or parts of packets) a connection ignored, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DropStats {
    /// Packets that arrived after the connection failed or finished.
    pub after_close: u64,
    /// SYNs on an established id that are not a retransmission of the
    /// peer's own SYN (or that reached the side that sent the SYN).
    pub unexpected_syn: u64,
    /// Packets before the handshake completed that could not be kept
    /// (not the SYN-ACK, not data acking our SYN, or too many of them).
    pub before_handshake: u64,
    /// Packets acknowledging a sequence number we never sent (the whole
    /// packet is ignored, as libtorrent does).
    pub ack_beyond_sent: u64,
    /// Packets whose selective ack reports packets we never sent (those
    /// bits are ignored, the rest of the packet is used).
    pub sack_beyond_sent: u64,
    /// Data with a sequence number far outside the receive window (beyond
    /// [`Config::max_reorder_packets`](crate::Config::max_reorder_packets)
    /// ahead of the next expected packet, or that far behind it).
    pub seq_out_of_window: u64,
    /// Data inside the window that did not fit in the receive buffer.
    pub recv_buffer_full: u64,
    /// Out-of-order data dropped because the socket's connections together
    /// held [`Config::reorder_memory`](crate::Config::reorder_memory) of it.
    pub reorder_memory_full: u64,
    /// Data with a sequence number past the peer's FIN.
    pub data_past_fin: u64,
    /// FINs whose sequence number contradicts the peer's earlier FIN.
    pub fin_mismatch: u64,
}

impl DropStats {
    /// Sum of every reason.
    pub fn total(&self) -> u64 {
        let Self {
            after_close,
            unexpected_syn,
            before_handshake,
            ack_beyond_sent,
            sack_beyond_sent,
            seq_out_of_window,
            recv_buffer_full,
            reorder_memory_full,
            data_past_fin,
            fin_mismatch,
        } = *self;
        after_close
            + unexpected_syn
            + before_handshake
            + ack_beyond_sent
            + sack_beyond_sent
            + seq_out_of_window
            + recv_buffer_full
            + reorder_memory_full
            + data_past_fin
            + fin_mismatch
    }
}

impl AddAssign<&DropStats> for DropStats {
    fn add_assign(&mut self, o: &DropStats) {
        // Destructured so a new field can't be forgotten here.
        let DropStats {
            after_close,
            unexpected_syn,
            before_handshake,
            ack_beyond_sent,
            sack_beyond_sent,
            seq_out_of_window,
            recv_buffer_full,
            reorder_memory_full,
            data_past_fin,
            fin_mismatch,
        } = *o;
        self.after_close += after_close;
        self.unexpected_syn += unexpected_syn;
        self.before_handshake += before_handshake;
        self.ack_beyond_sent += ack_beyond_sent;
        self.sack_beyond_sent += sack_beyond_sent;
        self.seq_out_of_window += seq_out_of_window;
        self.recv_buffer_full += recv_buffer_full;
        self.reorder_memory_full += reorder_memory_full;
        self.data_past_fin += data_past_fin;
        self.fin_mismatch += fin_mismatch;
    }
}
