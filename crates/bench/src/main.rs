//! foreshard-bench: the benchmark harness. It makes disks, pools and peers, runs the
//! workloads, writes one JSON document of results and renders its report (the terminal
//! table, and a marked section of docs/benchmarks.md). It drives the `foreshard` binary as
//! a subprocess and does not link the filesystem.

mod access;
mod btrfs;
mod cmd;
mod disks;
mod fio;
mod fsync;
mod gluster;
mod io;
mod meta;
mod mounts;
mod peers;
mod pool;
mod ratios;
mod recovery;
mod render;
mod reshard;
mod results;
mod signal;
mod sim;
mod stats;
mod teardown;
mod tools;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "foreshard-bench",
    version,
    about = "foreshard's benchmark harness"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// fio and metadata workloads on foreshard, one raw disk, mergerfs, btrfs RAID1 and
    /// GlusterFS replica 2, in one run (must run as root).
    Io(Box<io::IoArgs>),
    /// fsync-heavy and metadata workloads: two foreshard binaries and the raw disk in
    /// interleaved rounds, a fresh pool each (must run as root).
    Fsync(Box<fsync::FsyncArgs>),
    /// The access analyzer's cost: two pools side by side, with and without --no-access,
    /// the same fio jobs in ABBA rounds (must run as root).
    Access(Box<access::AccessArgs>),
    /// Recovery after a disk is yanked: foreshard (pool and reactive agents) against a
    /// plain parallel copy and btrfs replace, and the foreground share under each
    /// --recovery-profile (must run as root).
    Recovery(Box<recovery::RecoveryArgs>),
    /// What re-sharding buys on a block trace: co-accessed pairs across shards and bytes
    /// to rebuild before and after 'foreshard reshard', migration and analyzer cost (must
    /// run as root).
    Reshard(Box<reshard::ReshardArgs>),
    /// The fleet simulator ('foreshard sim') at 10,000 disks x 5 years, with its wall time.
    Sim(Box<sim::SimArgs>),
    /// Prints the report of a results file again; --render DOC writes it into DOC.
    Render {
        /// A results file (schema foreshard-bench/1).
        file: PathBuf,
        /// Replace the <!-- bench:NAME begin/end --> section of this document.
        #[arg(long, value_name = "DOC")]
        render: Option<PathBuf>,
    },
}

/// Writes the report of `r` into the `bench:<r.bench>` section of `doc`.
pub fn render_into(r: &results::Results, doc: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(doc).with_context(|| format!("cannot read {}", doc.display()))?;
    let body = render::without_machine_paths(&render::markdown(r));
    let new = render::replace_section(&text, &r.bench, &body)
        .with_context(|| format!("{}", doc.display()))?;
    std::fs::write(doc, new).with_context(|| format!("cannot write {}", doc.display()))?;
    log!("wrote the bench:{} section of {}", r.bench, doc.display());
    Ok(())
}

/// The benchmarks whose reports have a layout of their own.
fn layouts(r: &results::Results) -> Option<Vec<render::Part>> {
    match r.bench.as_str() {
        "recovery" => Some(recovery::report::parts(r)),
        "reshard" => Some(reshard::report::parts(r)),
        "sim" => Some(sim::parts(r)),
        _ => None,
    }
}

fn main() {
    let cli = Cli::parse();
    signal::install();
    render::set_layouts(layouts);
    let res = match cli.cmd {
        Command::Io(a) => io::run(*a),
        Command::Fsync(a) => fsync::run(*a),
        Command::Access(a) => access::run(*a),
        Command::Recovery(a) => recovery::run(*a),
        Command::Reshard(a) => reshard::run(*a),
        Command::Sim(a) => sim::run(*a),
        Command::Render { file, render } => results::Results::read(&file).and_then(|r| {
            print!("{}", render::text(&r));
            render.map_or(Ok(()), |doc| render_into(&r, &doc))
        }),
    };
    if let Err(e) = res {
        eprintln!("[foreshard-bench] error: {e:#}");
        std::process::exit(signal::caught().map_or(1, signal::exit_code));
    }
}
