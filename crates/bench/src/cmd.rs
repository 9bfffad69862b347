//! Running external commands (fio, mount, losetup, foreshard ...) with a timeout, and
//! killing them when a signal arrives; plus the log line format.

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::signal;

/// `[foreshard-bench HH:MM:SS] message` on stderr.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("[foreshard-bench {}] {}", $crate::cmd::clock(), format!($($arg)*))
    };
}

/// Local time of day as HH:MM:SS.
pub fn clock() -> String {
    // SAFETY: time(NULL) and localtime_r into a zeroed struct we own.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

/// What a finished command left.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A command line to run. By default it is killed when a signal arrives (so a Ctrl-C gets
/// to the teardown quickly); teardown steps use `uninterruptible`.
pub struct Cmd {
    prog: String,
    args: Vec<OsString>,
    timeout: Option<Duration>,
    interruptible: bool,
}

impl Cmd {
    pub fn new(prog: impl AsRef<Path>) -> Self {
        Cmd {
            prog: prog.as_ref().to_string_lossy().into_owned(),
            args: Vec::new(),
            timeout: None,
            interruptible: true,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    pub fn uninterruptible(mut self) -> Self {
        self.interruptible = false;
        self
    }

    /// The command line, for messages.
    pub fn line(&self) -> String {
        let mut s = self.prog.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// Starts the process with its stdout and stderr read by threads.
    #[allow(clippy::type_complexity)]
    fn start(&self) -> anyhow::Result<(Child, JoinHandle<String>, JoinHandle<String>)> {
        let mut child = Command::new(&self.prog)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", self.prog))?;
        let out = reader(child.stdout.take());
        let err = reader(child.stderr.take());
        Ok((child, out, err))
    }

    /// Runs it to the end (or its timeout) and returns what it printed, whatever its status.
    pub fn run(&self) -> anyhow::Result<Output> {
        let (mut child, out, err) = self.start()?;
        let status = self.wait(&mut child)?;
        Ok(Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    }

    /// Runs it and fails unless it exits 0; returns its stdout.
    pub fn ok(&self) -> anyhow::Result<String> {
        let o = self.run()?;
        if !o.status.success() {
            bail!(
                "{} failed ({}): {}{}",
                self.line(),
                o.status,
                o.stderr.trim(),
                if o.stderr.trim().is_empty() {
                    o.stdout.trim()
                } else {
                    ""
                }
            );
        }
        Ok(o.stdout)
    }

    /// Starts it in the background (stdout and stderr collected); killed when dropped.
    pub fn spawn(&self) -> anyhow::Result<Background> {
        let (child, out, err) = self.start()?;
        Ok(Background {
            line: self.line(),
            child: Some(child),
            out: Some(out),
            err: Some(err),
        })
    }

    fn wait(&self, child: &mut Child) -> anyhow::Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if self.interruptible && signal::caught().is_some() {
                kill(child);
                signal::check()?;
            }
            if self.timeout.is_some_and(|t| start.elapsed() > t) {
                kill(child);
                bail!(
                    "{} did not finish within {:?}",
                    self.line(),
                    self.timeout.unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A command running in the background (`Cmd::spawn`).
pub struct Background {
    pub line: String,
    child: Option<Child>,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
}

impl Background {
    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for it to end by itself; a caught signal kills it.
    pub fn wait(mut self) -> anyhow::Result<Output> {
        while self.running() {
            if signal::caught().is_some() {
                self.child.as_mut().map(kill);
                signal::check()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.finish()
    }

    /// SIGINT (fio then writes its report), SIGKILL if it has not ended after `grace`.
    pub fn interrupt(mut self, grace: Duration) -> anyhow::Result<Output> {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) };
        }
        let start = Instant::now();
        while self.running() && start.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.running() {
            crate::log!("{} ignores SIGINT; killing it", self.line);
            self.child.as_mut().map(kill);
        }
        self.finish()
    }

    fn finish(&mut self) -> anyhow::Result<Output> {
        let mut child = self.child.take().expect("finished once");
        let status = child.wait()?;
        let join =
            |h: Option<JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
        Ok(Output {
            status,
            stdout: join(self.out.take()),
            stderr: join(self.err.take()),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill(c);
        }
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn reader<R: Read + Send + 'static>(src: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = src {
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Whether `prog` is an executable on $PATH.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| is_executable(&d.join(prog))))
}

/// Whether `p` is a file with an execute bit.
pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// First line of `prog --version`-like output, or "" when it cannot run.
pub fn version_of(prog: &str, args: &[&str]) -> String {
    Cmd::new(prog)
        .args(args.iter().copied())
        .timeout(Duration::from_secs(20))
        .run()
        .ok()
        .map(|o| {
            let text = if o.stdout.trim().is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}
