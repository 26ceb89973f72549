//! The reporter's event buffer: numbers events in order and keeps the unacknowledged ones, so
//! they are replayed after a reconnect; when full it drops the oldest and reports the loss.

use std::collections::VecDeque;

use autoheal_proto::v1;

use crate::{clock, state::Emitted};

/// Events numbered in order, kept until the coordinator acknowledges them. When full, the oldest
/// is dropped and counted; the loss is reported as an `EventsDropped` event once there's room.
#[derive(Debug)]
pub struct EventBuffer {
    cap: usize,
    events: VecDeque<v1::Event>,
    last_seq: u64,
    dropped_total: u64,
    /// (count, first_seq, last_seq) of drops not yet reported.
    pending_drop: Option<(u64, u64, u64)>,
}

impl EventBuffer {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            events: VecDeque::new(),
            last_seq: 0,
            dropped_total: 0,
            pending_drop: None,
        }
    }

    /// Numbers `kind` and buffers it; returns the numbered event.
    pub fn push(&mut self, e: Emitted) -> v1::Event {
        self.last_seq += 1;
        let event = v1::Event {
            seq: self.last_seq,
            at: Some(clock::timestamp(e.at)),
            kind: Some(e.kind),
        };
        self.events.push_back(event.clone());
        while self.events.len() > self.cap {
            if let Some(old) = self.events.pop_front() {
                self.dropped_total += 1;
                self.pending_drop = Some(match self.pending_drop {
                    None => (1, old.seq, old.seq),
                    Some((n, first, _)) => (n + 1, first, old.seq),
                });
            }
        }
        event
    }

    /// If drops are pending and there is room, buffers the report and returns it to send.
    pub fn flush_drops(&mut self, at: std::time::SystemTime) -> Option<v1::Event> {
        let (count, first_seq, last_seq) = self.pending_drop?;
        if self.events.len() >= self.cap {
            return None;
        }
        self.pending_drop = None;
        Some(self.push(Emitted {
            at,
            kind: v1::event::Kind::EventsDropped(v1::EventsDropped {
                count,
                first_seq,
                last_seq,
            }),
        }))
    }

    /// Everything up to `seq` is durable on the coordinator.
    pub fn ack(&mut self, seq: u64) {
        while self.events.front().is_some_and(|e| e.seq <= seq) {
            self.events.pop_front();
        }
    }

    pub fn unacked(&self) -> impl Iterator<Item = &v1::Event> {
        self.events.iter()
    }

    /// How many events it keeps at most.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn ev(n: u32) -> Emitted {
        Emitted {
            at: SystemTime::UNIX_EPOCH,
            kind: v1::event::Kind::RestartAttempted(v1::RestartAttempted {
                attempt: n,
                ..Default::default()
            }),
        }
    }

    fn seqs(b: &EventBuffer) -> Vec<u64> {
        b.unacked().map(|e| e.seq).collect()
    }

    #[test]
    fn events_are_numbered_from_one_and_acks_are_cumulative() {
        let mut b = EventBuffer::new(10);
        for i in 0..5 {
            assert_eq!(b.push(ev(i)).seq, u64::from(i) + 1);
        }
        b.ack(3);
        assert_eq!(seqs(&b), [4, 5]);
        b.ack(2);
        assert_eq!(seqs(&b), [4, 5], "an older ack changes nothing");
        b.ack(5);
        assert!(b.is_empty());
        assert_eq!(b.last_seq(), 5);
    }

    #[test]
    fn overflow_drops_the_oldest_and_reports_the_range_once_there_is_room() {
        let mut b = EventBuffer::new(3);
        for i in 0..7 {
            b.push(ev(i));
        }
        assert_eq!(seqs(&b), [5, 6, 7]);
        assert_eq!(b.dropped_total(), 4);
        assert!(
            b.flush_drops(SystemTime::UNIX_EPOCH).is_none(),
            "no room yet"
        );
        b.ack(5);
        let report = b.flush_drops(SystemTime::UNIX_EPOCH).expect("room now");
        assert_eq!(report.seq, 8);
        assert_eq!(
            report.kind,
            Some(v1::event::Kind::EventsDropped(v1::EventsDropped {
                count: 4,
                first_seq: 1,
                last_seq: 4
            }))
        );
        assert_eq!(seqs(&b), [6, 7, 8]);
        assert!(
            b.flush_drops(SystemTime::UNIX_EPOCH).is_none(),
            "reported once"
        );
    }
}
