//! Measurements of a pool over four hosts (docs/benchmarks.md), run by hand or by
//! `scripts/bench --cluster` / `scripts/bench-fsync --standby`; ignored in `scripts/test`.
//! Every one interleaves the systems it compares, the order rotating per round, and prints
//! per-round ratios, their median and spread.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::*;

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// "median (spread lo-hi)" of the per-round ratios `a[i] / b[i]`.
fn ratio_line(a: &[f64], b: &[f64]) -> String {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    let (lo, hi) = r
        .iter()
        .fold((f64::MAX, 0f64), |(l, h), x| (l.min(*x), h.max(*x)));
    let each: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
    format!(
        "{:.2}x (spread {lo:.2}-{hi:.2}; rounds {})",
        median(r.clone()),
        each.join(", ")
    )
}

/// One round on `mnt`: (sequential write + fsync MiB/s, cold sequential read MiB/s, cold
/// 4 KiB random read IOPS with `threads` readers for `rand_s`) over a `mib` MiB file.
fn io_round(mnt: &Path, mib: usize, rand_s: f64, threads: usize) -> (f64, f64, f64) {
    let path = mnt.join("bench.dat");
    let chunk = pattern(1 << 20, 99);
    let t = Instant::now();
    let mut f = std::fs::File::create(&path).unwrap();
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let w = mib as f64 / t.elapsed().as_secs_f64();
    common::drop_caches();
    let t = Instant::now();
    let mut f = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k;
    }
    assert_eq!(n, mib << 20);
    let r = mib as f64 / t.elapsed().as_secs_f64();
    common::drop_caches();
    let iops = random_reads(&path, (mib as u64) << 20, rand_s, threads);
    std::fs::remove_file(&path).unwrap();
    (w, r, iops)
}

/// 4 KiB reads at random 4 KiB-aligned offsets of a `size`-byte file, `threads` readers
/// (each its own descriptor, advised random: no read-ahead) for `secs`; reads per second.
fn random_reads(path: &Path, size: u64, secs: f64, threads: usize) -> f64 {
    use std::os::fd::AsRawFd;
    let t0 = Instant::now();
    let stop = t0 + Duration::from_secs_f64(secs);
    let readers: Vec<_> = (0..threads as u64)
        .map(|t| {
            let path = path.to_path_buf();
            std::thread::spawn(move || {
                let f = std::fs::File::open(&path).unwrap();
                // SAFETY: an advice call on a descriptor this thread owns.
                unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
                let (mut x, mut n, blocks) =
                    (0x9e37_79b9_7f4a_7c15u64 ^ (t + 1), 0u64, size / 4096);
                let mut buf = [0u8; 4096];
                while Instant::now() < stop {
                    for _ in 0..32 {
                        // xorshift64: cheap and the same sequence for every system.
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        f.read_exact_at(&mut buf, (x % blocks) * 4096).unwrap();
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let n: u64 = readers.into_iter().map(|h| h.join().unwrap()).sum();
    n as f64 / t0.elapsed().as_secs_f64()
}

/// GlusterFS replica 2 over the cluster's storage hosts: a glusterd in each host's
/// namespace (its own /var/lib/glusterd, /run and log directory through a private mount
/// namespace, so the four do not share state), two bricks per host beside the node's disk
/// directories, the volume FUSE-mounted in the test's namespace with GlusterFS's client.
struct Gluster {
    mnt: PathBuf,
    ns: Vec<String>,
    glusterd: u32,
}

const GLUSTER_VOLUME: &str = "fsbench";

impl Gluster {
    fn start(c: &mut Cluster, hosts: &[&str]) -> Gluster {
        assert!(
            Command::new("glusterd").arg("--version").output().is_ok(),
            "glusterd not found: scripts/bench --cluster installs glusterfs-server"
        );
        for d in ["/var/lib/glusterd", "/var/log/glusterfs"] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut pids = vec![];
        for h in hosts {
            let dir = c.tmp.path().join(format!("{h}-gluster"));
            let sub = |s: &str| {
                let p = dir.join(s);
                std::fs::create_dir_all(&p).unwrap();
                p.display().to_string()
            };
            let script = format!(
                "mount --bind {} /var/lib/glusterd && mount --bind {} /run && \
                 mount --bind {} /var/log/glusterfs && exec glusterd -N -p /run/glusterd.pid",
                sub("lib"),
                sub("run"),
                sub("log")
            );
            let args: Vec<String> = ["-m", "--propagation", "private", "sh", "-c", &script]
                .map(String::from)
                .to_vec();
            pids.push(
                c.net
                    .spawn(h, "unshare", &args, &format!("{h}-glusterd.log")),
            );
        }
        let g = Gluster {
            mnt: c.tmp.path().join("gluster-mnt"),
            ns: hosts.iter().map(|h| c.net.ns(h)).collect(),
            glusterd: pids[0],
        };
        for p in &pids {
            wait_cli(*p);
        }
        g.make_volume(c, hosts);
        std::fs::create_dir(&g.mnt).unwrap();
        let src = format!("{}:/{GLUSTER_VOLUME}", c.net.ip(hosts[0]));
        let o = Command::new("mount")
            .args(["-t", "glusterfs", &src])
            .arg(&g.mnt)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        g
    }

    fn make_volume(&self, c: &Cluster, hosts: &[&str]) {
        for h in &hosts[1..] {
            gluster_ok(self.glusterd, &["peer", "probe", &c.net.ip(h)]);
        }
        let t0 = Instant::now();
        loop {
            let o = gluster(self.glusterd, &["peer", "status"]);
            let text = String::from_utf8_lossy(&o.stdout);
            if text.matches("Peer in Cluster (Connected)").count() == hosts.len() - 1 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "peers: {text}");
            std::thread::sleep(Duration::from_millis(200));
        }
        // Consecutive bricks form a replica pair: each pair spans two hosts.
        let mut args: Vec<String> = ["volume", "create", GLUSTER_VOLUME, "replica", "2"]
            .map(String::from)
            .to_vec();
        for i in 0..2 {
            for h in hosts {
                let b = c.tmp.path().join(format!("{h}-gbrick{i}"));
                std::fs::create_dir_all(&b).unwrap();
                args.push(format!("{}:{}", c.net.ip(h), b.display()));
            }
        }
        args.push("force".into()); // bricks on the root filesystem
        gluster_ok(
            self.glusterd,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        gluster_ok(self.glusterd, &["volume", "start", GLUSTER_VOLUME]);
    }
}

impl Drop for Gluster {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        // glusterd forks its brick and self-heal daemons: every gluster process in the
        // hosts' namespaces goes.
        for ns in &self.ns {
            let o = Command::new("ip").args(["netns", "pids", ns]).output();
            for pid in String::from_utf8_lossy(&o.map(|o| o.stdout).unwrap_or_default())
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"));
                if comm.is_ok_and(|c| c.starts_with("gluster")) {
                    // SAFETY: kill(2) of a gluster process in this test's namespaces.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// The gluster CLI in glusterd `pid`'s namespaces (its private /run holds the socket).
fn gluster(pid: u32, args: &[&str]) -> Output {
    Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-m",
            "-n",
            "gluster",
            "--mode=script",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn gluster_ok(pid: u32, args: &[&str]) {
    let o = gluster(pid, args);
    assert!(
        o.status.success(),
        "gluster {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn wait_cli(pid: u32) {
    let t0 = Instant::now();
    while !gluster(pid, &["pool", "list"]).status.success() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "glusterd {pid} did not answer"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// One measurement out of an `io_round`'s (write, read, random read).
type Pick = fn(&(f64, f64, f64)) -> f64;

/// docs/benchmarks.md, "A pool over four hosts": sequential write + fsync, cold sequential
/// read and cold 4 KiB random reads (2 readers) of a 1 GiB file on a 2-replica pool over 4
/// storage hosts (namespaces, veth, 2 disks each), against the same 8 disk directories as
/// one single-host pool and against GlusterFS replica 2 over the same four namespaces (two
/// bricks each), in interleaved rounds. `scripts/bench --cluster` (FSX_ROUNDS, FSX_MIB,
/// FSX_RAND_S).
#[test]
#[ignore = "a measurement, not a test: run by hand in release"]
fn bench_cluster_pool_against_one_host_and_glusterfs() {
    if !net::available() || !fuse_available() {
        return;
    }
    let (rounds, mib) = (env_or("FSX_ROUNDS", 3), env_or("FSX_MIB", 1024));
    let rand_s = env_or("FSX_RAND_S", 8) as f64;
    let hosts = ["s1", "s2", "s3", "s4"];
    let (mut c, m) = mounted_cluster(60_000);
    // FSX_ONLY=1 measures the 4-host pool alone (for profiling it); its numbers are
    // copied into the other columns.
    let only = std::env::var("FSX_ONLY").is_ok_and(|v| v == "1");
    let g = (!only).then(|| Gluster::start(&mut c, &hosts));
    let mut local = common::Pool::new(8, 2, "1MiB");
    local.mount();
    let names = ["4 hosts", "one host", "GlusterFS"];
    let g_mnt = g.as_ref().map_or(m.mnt.clone(), |g| g.mnt.clone());
    let mnts = [m.mnt.clone(), local.mnt.clone(), g_mnt];
    let mut res = vec![vec![]; 3];
    for round in 0..rounds {
        // Interleaved, the order rotating: no system always runs on a warmer machine.
        for k in 0..3 {
            let i = (round + k) % 3;
            if only && i > 0 {
                continue;
            }
            res[i].push(io_round(&mnts[i], mib, rand_s, 2));
        }
        if only {
            (res[1], res[2]) = (res[0].clone(), res[0].clone());
        }
        let line: Vec<String> = (0..3)
            .map(|i| {
                let (w, r, q) = res[i][round];
                format!("{} write {w:.0} read {r:.0} MiB/s rand {q:.0}/s", names[i])
            })
            .collect();
        eprintln!("round {round}: {}", line.join("; "));
    }
    let col = |i: usize, f: Pick| -> Vec<f64> { res[i].iter().map(f).collect() };
    let tests: [(&str, Pick); 3] = [
        ("sequential write + fsync, MiB/s", |x| x.0),
        ("cold sequential read, MiB/s", |x| x.1),
        ("cold 4 KiB random read, 2 readers, IOPS", |x| x.2),
    ];
    for (what, f) in tests {
        let (a, b, gl) = (col(0, f), col(1, f), col(2, f));
        eprintln!(
            "{what}: medians 4 hosts {:.0}, one host {:.0}, GlusterFS {:.0}; 4 hosts / one host {}; 4 hosts / GlusterFS {}",
            median(a.clone()),
            median(b.clone()),
            median(gl.clone()),
            ratio_line(&a, &b),
            ratio_line(&a, &gl)
        );
    }
    eprintln!("{rounds} rounds, {mib} MiB, random reads for {rand_s} s");
    drop(g);
}

/// A plain copy's two ends, in Python (what a user would write with sockets and
/// sendfile): `recv IP PORT FILE` writes what it receives to FILE and fsyncs it;
/// `send IP PORT BYTES DIR...` sends the first BYTES of the files under the DIRs.
const PLAIN_COPY_PY: &str = r#"
import os, socket, sys
if sys.argv[1] == "recv":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[2], int(sys.argv[3]))); s.listen(1); print("ready", flush=True)
    c, _ = s.accept(); buf = bytearray(1 << 20); n = 0
    with open(sys.argv[4], "wb") as f:
        while True:
            k = c.recv_into(buf)
            if not k: break
            f.write(memoryview(buf)[:k]); n += k
        f.flush(); os.fsync(f.fileno())
    print(n, flush=True)
else:
    s = socket.create_connection((sys.argv[2], int(sys.argv[3])))
    left = int(sys.argv[4])
    for d in sys.argv[5:]:
        for root, _, names in os.walk(d):
            for name in sorted(names):
                if left <= 0 or name.endswith(".tmp"): continue
                with open(os.path.join(root, name), "rb") as f:
                    k = min(os.fstat(f.fileno()).st_size, left)
                    if k: s.sendfile(f, 0, k); left -= k
    s.close()
"#;

/// `bytes` copied in three parallel TCP streams among `hosts` (each to the next), read cold
/// from each source's extent files, written and fsynced on the target's first disk.
/// Seconds from the first byte sent to the last target's fsync.
fn plain_copy(c: &Cluster, hosts: &[&str], bytes: u64) -> f64 {
    let py = c.tmp.path().join("plain_copy.py");
    std::fs::write(&py, PLAIN_COPY_PY).unwrap();
    common::drop_caches();
    let share = bytes / hosts.len() as u64;
    let mut recv = vec![];
    for (i, h) in hosts.iter().enumerate() {
        let to = c.disks[*h][0].join(format!("plain-copy-{i}"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &c.net.ns(h), "python3"])
            .arg(&py)
            .args(["recv", &c.net.ip(h), "7399"])
            .arg(&to)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        recv.push((child, out, to));
    }
    let t0 = Instant::now();
    let senders: Vec<_> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let target = hosts[(i + 1) % hosts.len()];
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &c.net.ns(h), "python3"])
                .arg(&py)
                .args(["send", &c.net.ip(target), "7399", &share.to_string()])
                .args(c.disks[*h].iter().map(|d| d.join("extents")));
            cmd.spawn().unwrap()
        })
        .collect();
    for mut s in senders {
        assert!(s.wait().unwrap().success());
    }
    let mut got = 0;
    for (mut child, mut out, to) in recv {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        got += line.trim().parse::<u64>().unwrap();
        assert!(child.wait().unwrap().success());
        std::fs::remove_file(to).unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    assert!(
        got >= share * hosts.len() as u64 * 9 / 10,
        "{got} of {bytes}"
    );
    secs
}

/// docs/benchmarks.md, "Rebuilding a host": a fresh 4-host pool per round, `FSX_MIB` MiB
/// in 16 MiB files (fsynced, caches dropped), host s2 killed; the rebuild's rate (bytes
/// copied over the time from the failure's detection, after the 1 s grace, to the last
/// replica committed) against a plain parallel copy of as many bytes, read cold from the
/// other three hosts' extent files, over the same links. The plain copy runs before the
/// kill in odd rounds and after the rebuild in even ones. `scripts/bench --cluster`.
#[test]
#[ignore = "a measurement, not a test: run by hand in release"]
fn bench_host_rebuild_against_plain_copy() {
    if !net::available() || !fuse_available() {
        return;
    }
    let (rounds, mib) = (env_or("FSX_ROUNDS", 3), env_or("FSX_MIB", 1024));
    let (mut rebuild, mut plain) = (vec![], vec![]);
    for round in 0..rounds {
        let (mut c, m) = mounted_cluster(1000);
        let chunk = pattern(16 << 20, round as u64);
        for i in 0..mib / 16 {
            let mut f = std::fs::File::create(m.mnt.join(format!("r{i:03}"))).unwrap();
            f.write_all(&chunk).unwrap();
            f.sync_all().unwrap();
        }
        let lost: u64 = c.extent_sizes("s2").iter().sum();
        let others = ["s1", "s3", "s4"];
        let before = (round % 2 == 1).then(|| plain_copy(&c, &others, lost));
        common::drop_caches();
        c.net.kill("s2");
        let v = m.fsp.wait_status(300, "s2 rebuilt", |v| {
            failed_disks(v) == 2 && v["recovery"]["state"] == "done"
        });
        let r = &v["recovery"];
        let ms = r["done_at_ms"].as_u64().unwrap() - r["detected_at_ms"].as_u64().unwrap();
        let copied = r["bytes_done"].as_u64().unwrap();
        if copied < lost * 9 / 10 {
            let log = std::fs::read_to_string(m.fsp.pool.join("foreshard.log")).unwrap();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            std::thread::sleep(Duration::from_secs(3));
            let v = m.fsp.json(&["status"]);
            panic!(
                "{copied} copied of {lost} lost: {}\n{:#}\n{}",
                r["state"],
                v["replica_health"],
                tail.join("\n")
            );
        }
        let secs = before.unwrap_or_else(|| plain_copy(&c, &others, lost));
        rebuild.push(copied as f64 / (ms as f64 / 1e3) / 1e6);
        plain.push(lost as f64 / secs / 1e6);
        eprintln!(
            "round {round}: rebuilt {copied} bytes in {ms} ms ({:.0} MB/s); plain copy of {lost} bytes in {secs:.2} s ({:.0} MB/s){}; ratio {:.2}",
            rebuild[round],
            plain[round],
            if before.is_some() { ", before the kill" } else { "" },
            rebuild[round] / plain[round]
        );
        common::assert_fully_replicated(&m.fsp);
        drop(m);
        drop(c);
    }
    eprintln!(
        "{rounds} rounds, {mib} MiB: rebuild median {:.0} MB/s, plain copy {:.0} MB/s; rebuild / plain {}",
        median(rebuild.clone()),
        median(plain.clone()),
        ratio_line(&rebuild, &plain)
    );
}

/// (4 KiB overwrite + fsync per second, 4 KiB create + fsync per second) on `dir`.
fn fsync_round(dir: &Path, n: usize, round: usize) -> (f64, f64) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join(format!("fsync4k-{round}"))).unwrap();
    let block = pattern(4096, round as u64);
    let t0 = Instant::now();
    for _ in 0..n {
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
    }
    let overwrite = n as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for i in 0..n / 2 {
        let p = dir.join(format!("c{round}-{i}"));
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&block).unwrap();
        f.sync_all().unwrap();
    }
    (overwrite, (n / 2) as f64 / t0.elapsed().as_secs_f64())
}

/// What a standby costs each fsync: one pool over four hosts, rounds with the standby
/// named and acking, and rounds with it paused (dropped from meta/sync after the first
/// fsync's 1 s wait, which is not measured), interleaved. `scripts/bench-fsync --standby`
/// runs it (FSX_ROUNDS, FSX_OPS).
#[test]
#[ignore = "a measurement, not a test: run by hand in release"]
fn bench_fsync_with_and_without_a_standby() {
    if !net::available() || !fuse_available() {
        return;
    }
    let (rounds, n) = (env_or("FSX_ROUNDS", 5), env_or("FSX_OPS", 400));
    let (c, m, sb) = mounted_with_standby(&[]);
    let spid = sb.child.id();
    let (mut on, mut off) = (vec![], vec![]);
    for round in 0..rounds {
        let mut pair = [(0.0, 0.0); 2];
        // The order alternates: neither side always runs second.
        for k in [round % 2, 1 - round % 2] {
            if k == 0 {
                wait_named(&c, &m.pool_id, Some("m2"), &sb);
                pair[0] = fsync_round(&m.mnt, n, 2 * round);
            } else {
                c.net.signal(spid, libc::SIGSTOP);
                write_synced(&m.mnt.join("drop"), b"x").unwrap(); // waits 1 s, drops it
                assert_eq!(meta_sync_names(&c, &m.pool_id), None);
                pair[1] = fsync_round(&m.mnt, n, 2 * round + 1);
                c.net.signal(spid, libc::SIGCONT);
            }
        }
        eprintln!(
            "round {round}: with standby overwrite+fsync {:.0}/s create+fsync {:.0}/s; without {:.0}/s {:.0}/s; ratios {:.2} {:.2}",
            pair[0].0, pair[0].1, pair[1].0, pair[1].1, pair[0].0 / pair[1].0, pair[0].1 / pair[1].1
        );
        on.push(pair[0]);
        off.push(pair[1]);
    }
    let col = |v: &[(f64, f64)], i: usize| -> Vec<f64> {
        v.iter().map(|p| if i == 0 { p.0 } else { p.1 }).collect()
    };
    for (i, what) in ["overwrite 4 KiB + fsync", "create 4 KiB + fsync"]
        .iter()
        .enumerate()
    {
        let (a, b) = (col(&on, i), col(&off, i));
        let ratios: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
        eprintln!(
            "{what}: median with standby {:.0}/s, without {:.0}/s; per-round ratio median {:.2} (spread {lo:.2}-{hi:.2}), {rounds} rounds of {n}",
            median(a.clone()),
            median(b.clone()),
            median(ratios.clone())
        );
    }
}
