//! Compare-and-swap changes of the cluster map, cut to what one etcd transaction takes.
//!
//! etcd refuses a transaction with more than 128 operations in any of its lists
//! (`--max-txn-ops`) or over 1.5 MiB (`--max-request-bytes`); both were measured here
//! (docs/cluster.md). A change of many records (new placements for every shard of a failed
//! host) is therefore several transactions. Each record's change stands alone (a shard's
//! placement is committed or refused by itself), so splitting loses no atomicity anyone
//! relies on.

use anyhow::bail;

/// Records per transaction: 100 compares + the term compare stays under 128 with room.
pub const TXN_RECORDS_MAX: usize = 100;
/// Encoded size of one transaction, kept well under etcd's 1.5 MiB request limit.
pub const TXN_BYTES_MAX: usize = 1024 * 1024;
/// What a compare and its put or delete add to a request besides the key and value bytes
/// (protobuf tags, lengths, revisions): generous, so the estimate is an upper bound.
const OP_OVERHEAD_BYTES: usize = 64;

/// What a change expects of the record before it applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist (create_revision == 0).
    Absent,
    /// The key's mod_revision is this one, as last read.
    Revision(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub expect: Expect,
    /// The new value; None deletes the record.
    pub value: Option<Vec<u8>>,
    /// Put under this lease (0: none).
    pub lease: i64,
}

impl Change {
    pub fn put(key: String, expect: Expect, value: Vec<u8>) -> Change {
        Change {
            key,
            expect,
            value: Some(value),
            lease: 0,
        }
    }
    pub fn delete(key: String, rev: i64) -> Change {
        Change {
            key,
            expect: Expect::Revision(rev),
            value: None,
            lease: 0,
        }
    }
    /// Upper bound of what this change adds to a transaction request (compare, put or
    /// delete, and the get of the failure branch).
    pub fn encoded_bytes_max(&self) -> usize {
        3 * (self.key.len() + OP_OVERHEAD_BYTES) + self.value.as_ref().map_or(0, |v| v.len())
    }
}

/// The metadata term a change is made under: the active metadata host's record and the
/// create_revision it had when this host won. A deposed host's changes fail this compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub key: String,
    pub create_revision: i64,
}

/// Cuts `changes` into transactions of at most TXN_RECORDS_MAX records and TXN_BYTES_MAX
/// bytes (the term compare counted in each), in order. A single change over the byte
/// limit, or two changes of one key (one transaction cannot hold both, and two would
/// apply them in an order nobody chose), is refused before anything is sent.
pub fn split(changes: Vec<Change>, term: Option<&Term>) -> anyhow::Result<Vec<Vec<Change>>> {
    let mut seen = std::collections::HashSet::new();
    for c in &changes {
        if !seen.insert(c.key.as_str()) {
            bail!("cluster map change names {} twice", c.key);
        }
    }
    let base = term.map_or(0, |t| t.key.len() + OP_OVERHEAD_BYTES);
    let mut out: Vec<Vec<Change>> = Vec::new();
    let mut cur: Vec<Change> = Vec::new();
    let mut cur_bytes = base;
    for c in changes {
        let b = c.encoded_bytes_max();
        if base + b > TXN_BYTES_MAX {
            bail!(
                "cluster map change of {} is {b} bytes encoded, over the {TXN_BYTES_MAX}-byte \
                 transaction limit",
                c.key
            );
        }
        if cur.len() == TXN_RECORDS_MAX || cur_bytes + b > TXN_BYTES_MAX {
            out.push(std::mem::take(&mut cur));
            cur_bytes = base;
        }
        cur_bytes += b;
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(i: usize, value_bytes: usize) -> Change {
        Change::put(
            format!("/f/k{i:05}"),
            Expect::Absent,
            vec![b'x'; value_bytes],
        )
    }

    #[test]
    fn many_records_become_transactions_of_at_most_the_limit() {
        let term = Term {
            key: "/f/meta/active".into(),
            create_revision: 9,
        };
        let cs: Vec<Change> = (0..250).map(|i| change(i, 120)).collect();
        let txns = split(cs.clone(), Some(&term)).unwrap();
        assert_eq!(
            txns.iter().map(Vec::len).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        // Order kept, nothing lost or doubled.
        assert_eq!(txns.concat(), cs);
        assert!(split(Vec::new(), None).unwrap().is_empty());
    }

    #[test]
    fn byte_limit_cuts_earlier_and_refuses_a_change_too_big_alone() {
        // 30 changes of 100 KiB: ten fit under 1 MiB, not eleven.
        let cs: Vec<Change> = (0..30).map(|i| change(i, 100 * 1024)).collect();
        let txns = split(cs, None).unwrap();
        assert!(txns
            .iter()
            .all(|t| t.iter().map(Change::encoded_bytes_max).sum::<usize>() <= TXN_BYTES_MAX));
        assert_eq!(txns.iter().map(Vec::len).sum::<usize>(), 30);
        assert_eq!(txns[0].len(), 10);
        let e = split(vec![change(0, TXN_BYTES_MAX)], None).unwrap_err();
        assert!(e.to_string().contains("over the"), "{e}");
    }

    #[test]
    fn one_key_twice_is_refused() {
        let e = split(vec![change(1, 1), change(1, 2)], None).unwrap_err();
        assert!(e.to_string().contains("twice"));
    }
}
