//! The metadata batches as written, kept in memory (bounded) for the standby's shipper:
//! reading them back from the WAL (`get_updates_since`) scans the WAL file from its start
//! on every sync, which grows with the file. A batch not here (the ring overflowed, or it
//! was written around `Meta::write`) is read from the WAL instead.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

/// What an entry costs besides its bytes (the tuple, the Arc, the deque slot).
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// (first sequence number, records, the batch's bytes).
pub type Tapped = (u64, u64, Arc<Vec<u8>>);

pub struct WalTap {
    /// Held across a write and the sequence number read after it: the batch's numbers.
    pub(crate) order: Mutex<()>,
    ring: Mutex<(VecDeque<Tapped>, usize)>,
    bytes_max: usize,
}

impl WalTap {
    pub fn new(bytes_max: usize) -> WalTap {
        WalTap {
            order: Mutex::new(()),
            ring: Mutex::new((VecDeque::new(), 0)),
            bytes_max,
        }
    }

    pub fn push(&self, first: u64, records: u64, data: Vec<u8>) {
        let mut g = self.ring.lock();
        g.1 += data.len() + ENTRY_OVERHEAD_BYTES;
        g.0.push_back((first, records, Arc::new(data)));
        while g.1 > self.bytes_max {
            let Some((_, _, d)) = g.0.pop_front() else {
                break;
            };
            g.1 -= d.len() + ENTRY_OVERHEAD_BYTES;
        }
    }

    /// The batches right after `after` (contiguous from `after + 1`) that start at or below
    /// `upto`; drops those at or below `after` (sent).
    pub fn since(&self, after: u64, upto: u64) -> Vec<Tapped> {
        let mut g = self.ring.lock();
        while g.0.front().is_some_and(|b| b.0 + b.1 - 1 <= after) {
            let (_, _, d) = g.0.pop_front().expect("front checked");
            g.1 -= d.len() + ENTRY_OVERHEAD_BYTES;
        }
        let mut out = Vec::new();
        let mut next = after + 1;
        for b in &g.0 {
            if b.0 != next || b.0 > upto {
                break;
            }
            next = b.0 + b.1;
            out.push(b.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_back_in_order_until_a_gap_and_the_ring_stays_bounded() {
        let t = WalTap::new(10 + 3 * ENTRY_OVERHEAD_BYTES);
        t.push(1, 2, vec![0; 4]); // 1..=2
        t.push(3, 1, vec![0; 4]); // 3
        t.push(5, 1, vec![0; 1]); // 5: 4 went around the tap
        let firsts = |v: Vec<Tapped>| v.iter().map(|b| b.0).collect::<Vec<_>>();
        assert_eq!(firsts(t.since(0, 10)), [1, 3]);
        assert_eq!(
            firsts(t.since(0, 2)),
            [1],
            "only batches starting at or below upto"
        );
        assert_eq!(firsts(t.since(2, 10)), [3]);
        assert!(
            t.since(3, 10).is_empty(),
            "4 is missing: the caller reads the WAL"
        );
        assert_eq!(firsts(t.since(4, 10)), [5]);
        t.push(6, 1, vec![0; 80]); // with 5 still kept: over the limit
                                   // Over 10 bytes: the oldest go.
        assert!(t.since(4, 10).is_empty());
        assert_eq!(firsts(t.since(5, 10)), [6]);
    }
}
