//! `foreshard debug inject ...`: fault injection on a pool's disks and daemon, by hand or
//! from tests and benchmarks (scripts/inject is a wrapper). Results go to stdout, notes to
//! stderr; any error exits non-zero.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::{ask, ask_as, LONG};
use foreshard::admin::Status;
use foreshard::api::Request;
use foreshard::inject;

#[derive(clap::Subcommand)]
pub enum DebugCmd {
    /// Inject a fault into a pool (DISK: a disk directory or a numeric disk id; all digits
    /// means an id, write ./0 for a directory named 0).
    Inject(InjectArgs),
}

#[derive(clap::Args)]
pub struct InjectArgs {
    /// The pool directory, default $FORESHARD_POOL (ids need it, and so do eio, slow, clear,
    /// fail and crash).
    #[arg(long, global = true)]
    pool: Option<PathBuf>,
    #[command(subcommand)]
    cmd: InjectCmd,
}

#[derive(clap::Subcommand)]
enum InjectCmd {
    /// The disk vanishes: a mounted disk is lazily unmounted (umount -l), a plain directory
    /// disk renamed to DISK.yanked.<epoch-seconds>. Prints 'yanked DISK at T'.
    Yank { disk: String },
    /// Flips one byte at a random offset in each of N random non-empty extent files.
    Bitrot {
        disk: String,
        #[arg(value_parser = clap::value_parser!(u32).range(1..))]
        n: u32,
    },
    /// The daemon fails this fraction of the disk's I/O with EIO (0 clears).
    Eio {
        disk: String,
        #[arg(value_parser = rate)]
        rate: f64,
    },
    /// The daemon delays each I/O on the disk by MS milliseconds (0 clears).
    Slow {
        disk: String,
        #[arg(value_parser = clap::value_parser!(u64).range(..1_000_000_000))]
        ms: u64,
    },
    /// Clears eio and slow on the disk.
    Clear { disk: String },
    /// Fills the disk's filesystem up to 64 KiB with DISK/foreshard.fill.
    Full {
        /// Allow filling a plain directory disk, which fills the host filesystem.
        #[arg(long)]
        force: bool,
        disk: String,
    },
    /// Removes DISK/foreshard.fill.
    Unfill { disk: String },
    /// kill -9 of the pool's daemon; its mountpoint stays as a dead mount. Prints 'killed PID'.
    Crash,
    /// Marks the disk failed (= foreshard disk fail POOL DISK).
    Fail { disk: String },
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("RATE must be a number in [0,1], not '{s}'")),
    }
}

pub fn run(cmd: DebugCmd) -> anyhow::Result<()> {
    let DebugCmd::Inject(a) = cmd;
    let pool = a
        .pool
        .or_else(|| std::env::var_os("FORESHARD_POOL").map(PathBuf::from));
    let mut t = Target::new(pool);
    match a.cmd {
        InjectCmd::Yank { disk } => yank(&mut t, &disk),
        InjectCmd::Bitrot { disk, n } => bitrot(&mut t, &disk, n),
        InjectCmd::Eio { disk, rate } => {
            let id = fault(&mut t, &disk, Some(rate), None)?;
            println!("disk {id}: eio rate {rate}");
            Ok(())
        }
        InjectCmd::Slow { disk, ms } => {
            let id = fault(&mut t, &disk, None, Some(ms))?;
            println!("disk {id}: delay {ms} ms");
            Ok(())
        }
        InjectCmd::Clear { disk } => {
            let id = fault(&mut t, &disk, Some(0.0), Some(0))?;
            println!("disk {id}: faults cleared");
            Ok(())
        }
        InjectCmd::Full { force, disk } => full(&mut t, &disk, force),
        InjectCmd::Unfill { disk } => unfill(&mut t, &disk),
        InjectCmd::Crash => crash(&t),
        InjectCmd::Fail { disk } => {
            let id = t.disk_id(&disk)?;
            ask(
                t.pool()?,
                Request::DiskFail {
                    disk: id.to_string(),
                },
                LONG,
            )?;
            println!("disk {id}: failed");
            Ok(())
        }
    }
}

/// The pool and its status, asked once and only when a disk id or the daemon is needed.
struct Target {
    pool: Option<PathBuf>,
    status: Option<Status>,
}

impl Target {
    fn new(pool: Option<PathBuf>) -> Self {
        Target { pool, status: None }
    }

    fn pool(&self) -> anyhow::Result<&Path> {
        let p = self
            .pool
            .as_deref()
            .context("this needs a pool: give --pool POOL or set FORESHARD_POOL")?;
        if !p.is_dir() {
            bail!("pool {}: no such directory", p.display());
        }
        Ok(p)
    }

    fn status(&mut self) -> anyhow::Result<&Status> {
        if self.status.is_none() {
            let pool = self.pool()?.to_path_buf();
            let s: Status = ask_as(&pool, Request::Status, LONG)
                .with_context(|| format!("cannot get the status of pool {}", pool.display()))?;
            self.status = Some(s);
        }
        Ok(self.status.as_ref().expect("just set"))
    }

    /// The pool's disk `disk` names (an id, or a path compared as given made absolute).
    fn find(&mut self, disk: &str) -> anyhow::Result<(u32, PathBuf)> {
        let pool = self.pool()?.display().to_string();
        let want = if is_id(disk) {
            None
        } else {
            Some(absolute(disk))
        };
        let s = self.status()?;
        let hit = s.disks.iter().find(|d| match &want {
            None => disk.parse() == Ok(d.id),
            Some(p) => Path::new(&d.path) == p,
        });
        if let Some(d) = hit {
            return Ok((d.id, PathBuf::from(&d.path)));
        }
        let known: Vec<String> = s
            .disks
            .iter()
            .map(|d| format!("{} ({})", d.id, d.path))
            .collect();
        let known = if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        };
        bail!("disk {disk} is not in pool {pool}; its disks: {known}")
    }

    /// The disk's directory, which must exist (a path needs no pool).
    fn disk_path(&mut self, disk: &str) -> anyhow::Result<PathBuf> {
        if disk.is_empty() {
            bail!("DISK must not be empty");
        }
        if !is_id(disk) {
            let p = Path::new(disk);
            if !p.exists() {
                bail!("disk {disk}: no such directory");
            }
            if !p.is_dir() {
                bail!("disk {disk}: not a directory");
            }
            return Ok(std::fs::canonicalize(p)?);
        }
        let (id, path) = self.find(disk)?;
        if !path.is_dir() {
            bail!(
                "disk {id} ({}): its directory does not exist (yanked?)",
                path.display()
            );
        }
        Ok(path)
    }

    fn disk_id(&mut self, disk: &str) -> anyhow::Result<u32> {
        if disk.is_empty() {
            bail!("DISK must not be empty");
        }
        Ok(self.find(disk)?.0)
    }
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `realpath -m`: symlinks resolved where the path exists (a yanked disk's does not).
fn absolute(s: &str) -> PathBuf {
    let p = Path::new(s);
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (abs.parent().map(std::fs::canonicalize), abs.file_name()) {
        (Some(Ok(dir)), Some(name)) => dir.join(name),
        _ => abs,
    }
}

fn note(s: &str) {
    eprintln!("note: {s}");
}

fn yank(t: &mut Target, disk: &str) -> anyhow::Result<()> {
    let d = t.disk_path(disk)?;
    let y = inject::yank(&d)?;
    note(&y.how);
    println!(
        "yanked {} at {}.{:09}",
        d.display(),
        y.at.as_secs(),
        y.at.subsec_nanos()
    );
    Ok(())
}

fn bitrot(t: &mut Target, disk: &str, n: u32) -> anyhow::Result<()> {
    let d = t.disk_path(disk)?;
    let flips = inject::bitrot(&d, n as usize)?;
    if flips.len() < n as usize {
        note(&format!(
            "disk {} has only {} non-empty extent file(s)",
            d.display(),
            flips.len()
        ));
    }
    for f in &flips {
        let (old, new) = (f.old, f.old ^ 0xff);
        note(&format!(
            "flipped byte {} of {} (0x{old:02x} -> 0x{new:02x})",
            f.offset,
            f.path.display()
        ));
    }
    println!("damaged {} extent file(s) on {}", flips.len(), d.display());
    Ok(())
}

/// Sets the daemon's fault injection on the disk; returns its id.
fn fault(
    t: &mut Target,
    disk: &str,
    eio_rate: Option<f64>,
    delay_ms: Option<u64>,
) -> anyhow::Result<u32> {
    let id = t.disk_id(disk)?;
    if !t.status()?.mounted {
        bail!(
            "pool {} is not mounted (this needs its running daemon)",
            t.pool()?.display()
        );
    }
    let req = Request::DiskFault {
        disk: id.to_string(),
        eio_rate,
        delay_ms,
    };
    ask(t.pool()?, req, LONG).context("foreshard disk fault failed")?;
    Ok(id)
}

fn full(t: &mut Target, disk: &str, force: bool) -> anyhow::Result<()> {
    let d = t.disk_path(disk)?;
    let f = inject::fill(&d, force)?;
    for n in &f.notes {
        note(n);
    }
    if !f.grew {
        println!(
            "disk {} is already full ({} bytes free)",
            d.display(),
            f.free_bytes
        );
        return Ok(());
    }
    println!(
        "filled {}: {} is {} bytes; statfs now says {} bytes free, {} available",
        d.display(),
        inject::FILL_NAME,
        f.fill_bytes,
        f.free_bytes,
        f.avail_bytes
    );
    Ok(())
}

fn unfill(t: &mut Target, disk: &str) -> anyhow::Result<()> {
    let d = t.disk_path(disk)?;
    let f = d.join(inject::FILL_NAME);
    match inject::unfill(&d)? {
        None => {
            note(&format!(
                "{} does not exist; nothing to remove",
                f.display()
            ));
            println!("unfilled {}", d.display());
        }
        Some(size) => println!(
            "unfilled {}: removed {} ({size} bytes)",
            d.display(),
            f.display()
        ),
    }
    Ok(())
}

fn crash(t: &Target) -> anyhow::Result<()> {
    let (pid, gone) = inject::crash(t.pool()?)?;
    if !gone {
        note(&format!("process {pid} still exists 5 s after kill -9"));
    }
    println!("killed {pid}");
    Ok(())
}
