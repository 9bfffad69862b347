//! The node's audit log of fenced requests: one JSON line per mutating request (write,
//! remove) accepted or refused, with the term and epoch it carried and the highest ones
//! the disk had seen. What it is for: a test (or an operator after an incident) can check
//! that no disk ever accepted a write older than something it had already seen.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// The log is rotated to `FILE.1` past this size, so it never fills a disk.
pub const AUDIT_BYTES_MAX: u64 = 64 << 20;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AuditLine {
    pub ms: u64,
    pub op: &'static str,
    pub disk: u32,
    pub shard: u32,
    pub epoch: u64,
    pub term: u64,
    pub accepted: bool,
    /// The disk's fence after the request (accepted) or when it refused it.
    pub term_seen: u64,
    pub epoch_seen: u64,
}

pub struct Audit {
    path: PathBuf,
    file: Mutex<(File, u64)>,
}

impl Audit {
    pub fn open(path: &Path) -> std::io::Result<Audit> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Audit {
            path: path.to_path_buf(),
            file: Mutex::new((file, len)),
        })
    }

    /// Appends one line; a failure to log is reported, never fails the request (the fence,
    /// not the log, is what keeps the data safe).
    pub fn log(&self, line: &AuditLine) {
        let mut text = serde_json::to_vec(line).expect("audit lines encode");
        text.push(b'\n');
        let mut g = self.file.lock().expect("audit lock");
        if g.1 + text.len() as u64 > AUDIT_BYTES_MAX {
            if let Err(e) = self.rotate(&mut g) {
                tracing::warn!(path = %self.path.display(), "audit log rotation: {e}");
            }
        }
        match g.0.write_all(&text) {
            Ok(()) => g.1 += text.len() as u64,
            Err(e) => tracing::warn!(path = %self.path.display(), "audit log: {e}"),
        }
    }

    fn rotate(&self, g: &mut (File, u64)) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        *g = (
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
            0,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_the_log_rotates() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        let a = Audit::open(&p).unwrap();
        let line = AuditLine {
            ms: 1,
            op: "write",
            disk: 2,
            shard: 3,
            epoch: 4,
            term: 5,
            accepted: false,
            term_seen: 6,
            epoch_seen: 7,
        };
        a.log(&line);
        let text = std::fs::read_to_string(&p).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(
            (v["op"].as_str(), v["epoch_seen"].as_u64()),
            (Some("write"), Some(7))
        );
        // Past the limit the file moves to .1 and a new one starts.
        a.file.lock().unwrap().1 = AUDIT_BYTES_MAX;
        a.log(&line);
        assert!(d.path().join("audit.log.1").exists());
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 1);
    }
}
