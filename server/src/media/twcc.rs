//! Transport-wide congestion control on the sending side of a server connection: it numbers
//! every RTP packet the connection sends (the transport-wide sequence header extension, on
//! the streams whose answer negotiated it), keeps when each left and how big it was until the
//! client's transport-wide feedback tells its fate, and hands those reports to the downlink
//! estimator ([`crate::media::estimate`]). webrtc-rs's TWCC sender and congestion-control
//! interceptors do the same with two allocations, a second parse of the extension and three
//! hash-map inserts per packet; on the forwarding path this is one interceptor, a deque indexed
//! by the sequence number, and a 2-byte slice of a shared buffer.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use rtc::interceptor::{
    convert_twcc, Acknowledgement, Interceptor, Packet as InterceptorPacket, PacketReport,
    StreamInfo, TaggedPacket,
};
use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::sansio::Protocol;
use rtc::sdp::extmap::TRANSPORT_CC_URI;
use rtc::shared::marshal::MarshalSize;

use crate::media::estimate::DownlinkEstimator;

/// Packets kept waiting for feedback at most: beyond, the client is not sending any (or lost
/// a lot of it), and the oldest go unreported. Well under the 32,768 that keeps a 16-bit
/// sequence number unambiguous.
const MOST_OUTSTANDING: usize = 8192;
/// The buffer the extensions' two bytes are cut from, in one allocation per this many bytes.
const EXTENSION_SLAB: usize = 4096;

/// The packets sent and not yet reported on, in the order they left.
#[derive(Debug, Default)]
pub struct SendHistory {
    /// The number (unwrapped) of the oldest packet in `sent`.
    first: u64,
    sent: VecDeque<Sent>,
    /// Where in `sent` the newest packet feedback said arrived is, if any.
    highest_arrived: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    ssrc: u32,
    sequence_number: u16,
    size: usize,
    departure: Instant,
    arrived: bool,
    /// On the client's clock, as its feedback says.
    arrival: Option<Duration>,
}

impl SendHistory {
    /// Records a packet leaving `now`; returns its transport-wide sequence number.
    pub fn record(&mut self, ssrc: u32, sequence_number: u16, size: usize, now: Instant) -> u16 {
        if self.sent.len() == MOST_OUTSTANDING {
            self.sent.pop_front();
            self.first += 1;
            self.highest_arrived = self.highest_arrived.and_then(|index| index.checked_sub(1));
        }
        self.sent.push_back(Sent {
            ssrc,
            sequence_number,
            size,
            departure: now,
            arrived: false,
            arrival: None,
        });
        (self.first + self.sent.len() as u64 - 1) as u16
    }

    /// Takes in what feedback says of one packet (one it has forgotten, or reported on
    /// already, is passed over).
    pub fn acknowledge(&mut self, acknowledgement: &Acknowledgement) {
        let index = usize::from(
            acknowledgement
                .sequence_number
                .wrapping_sub(self.first as u16),
        );
        let Some(sent) = self.sent.get_mut(index) else {
            return;
        };
        sent.arrived = acknowledgement.arrived;
        sent.arrival = acknowledgement.arrival;
        if sent.arrived && self.highest_arrived.is_none_or(|highest| index > highest) {
            self.highest_arrived = Some(index);
        }
    }

    /// The reports on every packet up to the newest that arrived, in the order they left;
    /// those feedback did not say arrived by then count as lost.
    pub fn take_reports(&mut self) -> Vec<PacketReport> {
        let Some(highest) = self.highest_arrived.take() else {
            return Vec::new();
        };
        let first = self.first;
        self.first += highest as u64 + 1;
        self.sent
            .drain(..=highest)
            .enumerate()
            .map(|(index, sent)| {
                let id = first + index as u64;
                PacketReport {
                    ssrc: sent.ssrc,
                    id,
                    rtp_sequence_number: sent.sequence_number,
                    is_twcc: true,
                    twcc_sequence_number: id as u16,
                    size: sent.size,
                    arrived: sent.arrived,
                    departure: sent.departure,
                    arrival: sent.arrival.filter(|_| sent.arrived),
                    ecn: Ecn::NotEct,
                }
            })
            .collect()
    }
}

/// The interceptor: numbers and records on the way out, feedback into the estimator on the
/// way in. Nothing is held back (no pacing): a forwarded packet leaves at once.
pub struct TransportWide {
    /// The header extension id of each sent stream that negotiated transport-wide numbering.
    extension_ids: HashMap<u32, u8>,
    history: SendHistory,
    slab: BytesMut,
    estimator: DownlinkEstimator,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl TransportWide {
    pub fn new(estimator: DownlinkEstimator) -> TransportWide {
        TransportWide {
            extension_ids: HashMap::new(),
            history: SendHistory::default(),
            slab: BytesMut::new(),
            estimator,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }

    /// `sequence` as the extension's two bytes, cut from the slab.
    fn extension(&mut self, sequence: u16) -> Bytes {
        if self.slab.capacity() < 2 {
            self.slab = BytesMut::with_capacity(EXTENSION_SLAB);
        }
        self.slab.put_u16(sequence);
        self.slab.split_to(2).freeze()
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for TransportWide {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, message: TaggedPacket) -> Result<(), Self::Error> {
        if let InterceptorPacket::Rtcp(packets) = &message.message.packet {
            let mut fed_back = false;
            for packet in packets {
                if let Some(feedback) = packet.as_any().downcast_ref::<TransportLayerCc>() {
                    for acknowledgement in convert_twcc(feedback) {
                        self.history.acknowledge(&acknowledgement);
                    }
                    fed_back = true;
                }
            }
            if fed_back {
                let reports = self.history.take_reports();
                self.estimator.on_reports(message.now, &reports);
            }
        }
        self.read.push_back(message);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, mut message: TaggedPacket) -> Result<(), Self::Error> {
        if let InterceptorPacket::Rtp(packet) = &mut message.message.packet {
            if let Some(&id) = self.extension_ids.get(&packet.header.ssrc) {
                // The extension's 4 bytes of profile and length plus its 4 of id and value.
                let size = packet.header.marshal_size() + 8 + packet.payload.len();
                let sequence = self.history.record(
                    packet.header.ssrc,
                    packet.header.sequence_number,
                    size,
                    message.now,
                );
                let extension = self.extension(sequence);
                // Fails only on an id outside the one-byte range, which the answer did not give.
                let _ = packet.header.set_extension(id, extension);
            }
        }
        self.write.push_back(message);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for TransportWide {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        let id = info
            .rtp_header_extensions
            .iter()
            .find(|extension| extension.uri == TRANSPORT_CC_URI)
            .and_then(|extension| u8::try_from(extension.id).ok())
            .filter(|id| *id != 0);
        if let Some(id) = id {
            self.extension_ids.insert(info.ssrc, id);
        }
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.extension_ids.remove(&info.ssrc);
    }

    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrived(sequence_number: u16, at_ms: u64) -> Acknowledgement {
        Acknowledgement::received(
            sequence_number,
            Some(Duration::from_millis(at_ms)),
            Ecn::NotEct,
        )
    }

    #[test]
    fn packets_are_numbered_in_the_order_they_leave() {
        let mut history = SendHistory::default();
        let now = Instant::now();
        let numbers: Vec<u16> = (0..3)
            .map(|index| history.record(7, 100 + index, 1000, now))
            .collect();
        assert_eq!(numbers, [0, 1, 2]);
    }

    #[test]
    fn feedback_reports_up_to_the_newest_arrival_with_the_gaps_as_lost() {
        let mut history = SendHistory::default();
        let start = Instant::now();
        for index in 0..5u16 {
            let at = start + Duration::from_millis(u64::from(index) * 10);
            history.record(7, 100 + index, 1000 + usize::from(index), at);
        }
        // 0 and 2 arrived, 1 did not; 3 and 4 are not reported yet.
        history.acknowledge(&arrived(0, 50));
        history.acknowledge(&Acknowledgement::lost(1));
        history.acknowledge(&arrived(2, 75));
        let reports = history.take_reports();
        let seen: Vec<(u16, u16, bool, Option<Duration>, usize)> = reports
            .iter()
            .map(|r| {
                let fate = (r.twcc_sequence_number, r.rtp_sequence_number, r.arrived);
                (fate.0, fate.1, fate.2, r.arrival, r.size)
            })
            .collect();
        assert_eq!(
            seen,
            [
                (0, 100, true, Some(Duration::from_millis(50)), 1000),
                (1, 101, false, None, 1001),
                (2, 102, true, Some(Duration::from_millis(75)), 1002),
            ]
        );
        assert_eq!(reports[1].departure, start + Duration::from_millis(10));
        // Nothing new: nothing to report. Then the rest.
        assert!(history.take_reports().is_empty());
        history.acknowledge(&arrived(2, 75)); // a repeat of what was reported
        history.acknowledge(&arrived(4, 99));
        let rest: Vec<(u16, bool)> = history
            .take_reports()
            .iter()
            .map(|r| (r.twcc_sequence_number, r.arrived))
            .collect();
        assert_eq!(rest, [(3, false), (4, true)]);
    }

    #[test]
    fn numbers_wrap_and_feedback_still_finds_its_packets() {
        let mut history = SendHistory::default();
        let now = Instant::now();
        for _ in 0..65_534u32 {
            let number = history.record(7, 0, 100, now);
            history.acknowledge(&arrived(number, 1));
            history.take_reports();
        }
        let numbers: Vec<u16> = (0..4).map(|_| history.record(7, 0, 100, now)).collect();
        assert_eq!(numbers, [65_534, 65_535, 0, 1]);
        history.acknowledge(&arrived(1, 2));
        let reported: Vec<(u64, u16, bool)> = history
            .take_reports()
            .iter()
            .map(|r| (r.id, r.twcc_sequence_number, r.arrived))
            .collect();
        assert_eq!(
            reported,
            [
                (65_534, 65_534, false),
                (65_535, 65_535, false),
                (65_536, 0, false),
                (65_537, 1, true)
            ]
        );
    }

    #[test]
    fn without_feedback_the_history_stays_bounded() {
        let mut history = SendHistory::default();
        let now = Instant::now();
        for _ in 0..MOST_OUTSTANDING + 10 {
            history.record(7, 0, 100, now);
        }
        assert_eq!(history.sent.len(), MOST_OUTSTANDING);
        // The newest is still found by its number.
        let newest = (MOST_OUTSTANDING + 9) as u16;
        history.acknowledge(&arrived(newest, 5));
        let reports = history.take_reports();
        assert_eq!(reports.len(), MOST_OUTSTANDING);
        assert_eq!(reports.last().map(|r| r.twcc_sequence_number), Some(newest));
    }
}
