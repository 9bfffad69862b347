//! A cluster of hosts on one machine, for tests: one network namespace per host on a bridge
//! (in a namespace of its own), a veth from the test's own namespace onto the bridge so the
//! test process reaches every host, and etcd members started inside the hosts.
//!
//! Names carry the test process's pid (`fsc<pid>x<n>-<host>`), so two runs never collide,
//! and namespaces left by a killed run (their pid gone) are deleted by the next one. `Drop`
//! kills every process started here, deletes the namespaces and the data directory.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The tests' runtime: two workers, as the daemon's cluster runtime will have.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits until `key` is present (or absent) in the map, at most `max`; its record when present.
pub async fn wait_for(
    map: &foreshard_cluster::map::Map,
    key: &str,
    present: bool,
    max: Duration,
) -> Option<foreshard_cluster::map::Kv> {
    let t0 = Instant::now();
    loop {
        let kv = map.get(key).await.unwrap();
        if kv.is_some() == present {
            return kv;
        }
        assert!(
            t0.elapsed() < max,
            "{key} present={} after {max:?}",
            kv.is_some()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);
/// etcd comes up in about 2 s here; allow for a loaded machine.
const ETCD_HEALTHY_WAIT: Duration = Duration::from_secs(30);

pub struct Net {
    tag: String,
    /// The first three octets of the /24 this net uses.
    subnet: String,
    pub dir: PathBuf,
    hosts: Vec<String>,
    children: Vec<(String, Child)>,
    members: Vec<String>,
    /// Each member's etcd arguments, to start it again over its data directory.
    etcd_args: Vec<(String, Vec<String>)>,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn must(args: &[&str]) {
    run(args).unwrap_or_else(|e| panic!("{e}"));
}

/// Whether this machine can run the cluster tests (root, `ip netns`, etcd). Under CI a
/// missing piece is a failure, not a skip.
pub fn available() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["ip", "etcd", "etcdctl"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if root && tools {
        return true;
    }
    let why =
        format!("cluster tests need root, ip(8), etcd and etcdctl (root {root}, tools {tools})");
    if std::env::var_os("CI").is_some() {
        panic!("{why}: scripts/test installs them");
    }
    eprintln!("SKIP: {why}");
    false
}

/// Deletes namespaces of earlier runs whose process is gone.
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("fsc") else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if !pid.is_empty() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

impl Net {
    pub fn new(hosts: &[&str]) -> Net {
        remove_leftovers();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let idx = (pid as usize * 8 + n as usize) % 25_000;
        let net = Net {
            tag: format!("fsc{pid}x{n}"),
            subnet: format!("10.{}.{}", 100 + idx / 250, idx % 250),
            dir: PathBuf::from(format!("/dev/shm/fsc{pid}x{n}")),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            children: Vec::new(),
            members: Vec::new(),
            etcd_args: Vec::new(),
        };
        std::fs::create_dir_all(&net.dir).unwrap();
        net.make_bridge();
        for h in hosts {
            net.add_host(h);
        }
        net
    }

    fn bridge_ns(&self) -> String {
        format!("{}-net", self.tag)
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    pub fn ip(&self, host: &str) -> String {
        let i = self
            .hosts
            .iter()
            .position(|h| h == host)
            .expect("no such host");
        format!("{}.{}", self.subnet, i + 1)
    }

    /// The test process's own address on the bridge.
    pub fn root_ip(&self) -> String {
        format!("{}.254", self.subnet)
    }

    fn make_bridge(&self) {
        let b = self.bridge_ns();
        must(&["ip", "netns", "add", &b]);
        must(&["ip", "-n", &b, "link", "add", "br0", "type", "bridge"]);
        must(&["ip", "-n", &b, "link", "set", "br0", "up"]);
        // The test process's own end: a veth in this namespace, its peer on the bridge.
        let mine = format!("fr{}", &self.tag[3..]);
        let mine = &mine[..mine.len().min(15)]; // IFNAMSIZ
        must(&[
            "ip", "link", "add", mine, "type", "veth", "peer", "name", "v-root", "netns", &b,
        ]);
        must(&[
            "ip", "-n", &b, "link", "set", "v-root", "master", "br0", "up",
        ]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}.254/24", self.subnet),
            "dev",
            mine,
        ]);
        must(&["ip", "link", "set", mine, "up"]);
    }

    fn add_host(&self, host: &str) {
        let (b, ns) = (self.bridge_ns(), self.ns(host));
        let port = format!("v-{host}");
        must(&["ip", "netns", "add", &ns]);
        must(&[
            "ip", "-n", &b, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        must(&["ip", "-n", &b, "link", "set", &port, "master", "br0", "up"]);
        must(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", self.ip(host)),
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    }

    /// Runs `cmd args` inside `host`'s namespace; returns its pid.
    pub fn spawn(&mut self, host: &str, cmd: &str, args: &[String], log: &str) -> u32 {
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), cmd])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd} in {host}: {e}"));
        let pid = child.id();
        self.children.push((host.to_string(), child));
        pid
    }

    /// Starts an etcd member on each of `members` (hosts of this net) and waits until every
    /// one is healthy. Returns the `--cluster` URL for cluster `cluster`.
    pub fn etcd(&mut self, members: &[&str], cluster: &str) -> String {
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{m}=http://{}:2380", self.ip(m)))
            .collect();
        for m in members {
            let ip = self.ip(m);
            let data = self.dir.join(m);
            let args: Vec<String> = [
                "--name",
                m,
                "--data-dir",
                data.to_str().unwrap(),
                "--listen-peer-urls",
                &format!("http://{ip}:2380"),
                "--initial-advertise-peer-urls",
                &format!("http://{ip}:2380"),
                "--listen-client-urls",
                &format!("http://{ip}:2379"),
                "--advertise-client-urls",
                &format!("http://{ip}:2379"),
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                &self.tag,
                "--initial-cluster-state",
                "new",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            self.spawn(m, "etcd", &args, &format!("{m}.log"));
            self.members.push(m.to_string());
            self.etcd_args.push((m.to_string(), args));
        }
        self.wait_healthy(members);
        let eps: Vec<String> = members
            .iter()
            .map(|m| format!("{}:2379", self.ip(m)))
            .collect();
        format!("etcd://{}/{cluster}", eps.join(","))
    }

    /// Starts member `m` again (after a kill) over its data directory: it rejoins the
    /// cluster it was in. Logs to `log`.
    pub fn restart_etcd(&mut self, m: &str, log: &str) {
        let args = self
            .etcd_args
            .iter()
            .find(|(n, _)| n == m)
            .expect("no such member");
        let args = args.1.clone();
        self.spawn(m, "etcd", &args, log);
    }

    pub fn wait_healthy(&self, members: &[&str]) {
        let eps: Vec<String> = members
            .iter()
            .map(|m| format!("http://{}:2379", self.ip(m)))
            .collect();
        let t0 = Instant::now();
        loop {
            let ok = Command::new("etcdctl")
                .args(["--endpoints", &eps.join(","), "endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            if t0.elapsed() > ETCD_HEALTHY_WAIT {
                let logs: Vec<String> = members
                    .iter()
                    .map(|m| {
                        std::fs::read_to_string(self.dir.join(format!("{m}.log")))
                            .unwrap_or_default()
                    })
                    .collect();
                panic!(
                    "etcd not healthy after {ETCD_HEALTHY_WAIT:?}: {}",
                    logs.join("\n----\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The member that leads now, by `etcdctl endpoint status`.
    pub fn leader(&self) -> Option<String> {
        for m in &self.members {
            let ep = format!("http://{}:2379", self.ip(m));
            let out = Command::new("etcdctl")
                .args(["--endpoints", &ep, "endpoint", "status", "-w", "json"])
                .env("ETCDCTL_API", "3")
                .output()
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let st = &v[0]["Status"];
            if st["header"]["member_id"] == st["leader"] {
                return Some(m.clone());
            }
        }
        None
    }

    /// The pid of the latest process started on `host`.
    pub fn pid(&self, host: &str) -> u32 {
        let c = self
            .children
            .iter()
            .rfind(|(h, _)| h == host)
            .expect("nothing runs there");
        // `ip netns exec` execs the command, so the child's pid is the command's.
        c.1.id()
    }

    /// Cuts `host` off at its switch port (the host itself cannot undo it).
    pub fn cut(&self, host: &str) {
        must(&[
            "ip",
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &format!("v-{host}"),
            "down",
        ]);
    }
    pub fn heal(&self, host: &str) {
        must(&[
            "ip",
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &format!("v-{host}"),
            "up",
        ]);
    }
    pub fn signal(&self, pid: u32, sig: i32) {
        assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill {pid}");
    }
    /// Waits up to `timeout` for the process `pid` (started by `spawn`) to exit; its status.
    pub fn wait_exit(&mut self, pid: u32, timeout: Duration) -> Option<std::process::ExitStatus> {
        let c = self.children.iter_mut().find(|(_, c)| c.id() == pid)?;
        let t0 = std::time::Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(st)) = c.1.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
    /// SIGKILLs the processes of `host` and reaps them.
    pub fn kill(&mut self, host: &str) {
        for (h, c) in self.children.iter_mut() {
            if h == host {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Namespaces of this net that exist now (for the clean-up check).
    pub fn namespaces_of(tag: &str) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{tag}-")))
            .map(String::from)
            .collect()
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut() {
            let _ = unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in self.hosts.clone() {
            // What the children forked (daemons that detach, e.g. glusterd's bricks).
            let pids = Command::new("ip")
                .args(["netns", "pids", &self.ns(&h)])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) of a process inside this net's own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = run(&["ip", "netns", "del", &self.ns(&h)]);
        }
        // Deleting the bridge's namespace destroys v-root, and with it our end of the veth.
        let _ = run(&["ip", "netns", "del", &self.bridge_ns()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
