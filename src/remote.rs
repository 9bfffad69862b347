//! Disks on other hosts (docs/cluster.md, step 5): [`RemoteDisk`] is a pool disk reached
//! over the extent service, [`StoreBackend`] is what a storage host (`foreshard node`) serves
//! its disks with. Both ends use the store's own extent files, so one code path (buckets,
//! O_DIRECT, atomic repair, durable syncs) writes every extent file of every host.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::bail;

use foreshard_cluster::wire::{
    self, scan_page, Class, Client, CopyReq, Ctx, DiskBackend, DiskInfo, ReadReq, Space, WireError,
    WriteReq,
};

use crate::meta::DiskState;
use crate::store::{
    make_buckets, Disk, ExtentId, HostSignals, ReadError, RemoteIo, ShardEpoch, Store,
};

pub fn to_wire(id: &ExtentId) -> wire::ExtentId {
    wire::ExtentId {
        inode: id.ino,
        index: id.index,
        version: id.version,
    }
}

pub fn from_wire(id: &wire::ExtentId) -> ExtentId {
    ExtentId {
        ino: id.inode,
        index: id.index,
        version: id.version,
    }
}

/// How a [`HostLink`] reaches its host: a cluster pool looks the host's address up in the
/// map and connects (every time it is asked: the host may have moved or be down).
pub type Connect = Box<dyn Fn() -> io::Result<Client> + Send + Sync>;

/// One storage host's extent-service connection, shared by its disks. Made on first use,
/// so a pool mounts while a host is down; kept while the host answers (its pool of sockets
/// reconnects after a reset), made again after an outage.
pub struct HostLink {
    pub name: String,
    connect: Connect,
    client: parking_lot::Mutex<Option<Arc<Client>>>,
    /// Answering -> network error transitions (`HostSignals::outages`).
    outages: AtomicU64,
    down: AtomicBool,
    since: std::time::Instant,
    /// Set at an outage: the next use looks the host up again (it may come back at another
    /// address, its disks numbered otherwise), at most once per `RELINK_INTERVAL`, keeping
    /// the old connection while the new one cannot be made (etcd down, host still down).
    stale: AtomicBool,
    last_relink: parking_lot::Mutex<Option<std::time::Instant>>,
}

/// How often a stale link tries to connect anew (each try is an etcd read and a connect).
const RELINK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl HostLink {
    pub fn new(name: &str, connect: Connect) -> HostLink {
        HostLink {
            name: name.to_string(),
            connect,
            client: parking_lot::Mutex::new(None),
            outages: AtomicU64::new(0),
            down: AtomicBool::new(false),
            since: std::time::Instant::now(),
            stale: AtomicBool::new(false),
            last_relink: parking_lot::Mutex::new(None),
        }
    }

    /// Counts an outage at the first network error after an answer (errors while the
    /// host stays down are one outage).
    pub fn note<T>(&self, r: &io::Result<T>) {
        match r {
            Ok(_) => self.down.store(false, Ordering::Relaxed),
            Err(e) if crate::store::is_network_error(e) => self.mark_down(&e.to_string()),
            Err(_) => {}
        }
    }

    /// The host does not answer (an error, or the detector saw a probe hang).
    pub fn mark_down(&self, why: &str) {
        if !self.down.swap(true, Ordering::Relaxed) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(host = %self.name, "storage host stopped answering: {why}");
            self.stale.store(true, Ordering::Relaxed);
        }
    }

    pub fn signals(&self) -> HostSignals {
        HostSignals {
            outages: self.outages.load(Ordering::Relaxed),
            watched_s: self.since.elapsed().as_secs_f64(),
        }
    }

    /// The connection, made now if there is none or it went stale (one caller at a time
    /// connects).
    pub fn client(&self) -> io::Result<Arc<Client>> {
        let mut g = self.client.lock();
        let stale = self.stale.load(Ordering::Relaxed);
        if let Some(c) = g.as_ref().filter(|_| !stale) {
            return Ok(c.clone());
        }
        if let Some(c) = g.as_ref() {
            let mut last = self.last_relink.lock();
            if last.is_some_and(|t| t.elapsed() < RELINK_INTERVAL) {
                return Ok(c.clone());
            }
            *last = Some(std::time::Instant::now());
        }
        match (self.connect)() {
            Ok(c) => {
                let c = Arc::new(c);
                *g = Some(c.clone());
                self.stale.store(false, Ordering::Relaxed);
                Ok(c)
            }
            Err(e) => g.clone().ok_or(e),
        }
    }
}

/// One pool disk on a storage host: the host's link and the disk's cluster-wide uuid (its
/// number on the host comes from the host's `HelloOk`).
pub struct RemoteDisk {
    pub link: Arc<HostLink>,
    pub uuid: String,
    /// The storage host's number in the pool (placement's failure domain).
    pub host_no: u32,
    /// The metadata term every request carries (shared by all remote disks; raised when
    /// this host wins the pool again).
    pub term: Arc<AtomicI64>,
    pub block_bytes: u32,
    /// Files written (or installed) here and not synced since, with the host incarnation
    /// they went to: a host that restarted in between may have lost them, and its sync
    /// cannot tell a lost file from one reaped meanwhile.
    written: parking_lot::Mutex<Written>,
}

/// Files `Written` tracks; past it the map is dropped and every untracked file counts as
/// written to the incarnation of that moment (a restart after it makes them all lost).
const WRITTEN_TRACKED_MAX: usize = 1 << 20;

#[derive(Default)]
struct Written {
    files: HashMap<ExtentId, u64>,
    /// Staged recovery copies (id, tag): the incarnation they were staged on.
    staged: HashMap<(ExtentId, u32), u64>,
    /// The incarnation when the map was last dropped (at its limit).
    dropped_at: Option<u64>,
}

impl Written {
    fn note(&mut self, id: &ExtentId, inc: u64) {
        if self.files.len() >= WRITTEN_TRACKED_MAX {
            tracing::error!(
                "{} unsynced files tracked: tracking dropped",
                self.files.len()
            );
            self.files.clear();
            self.dropped_at = Some(inc);
        }
        self.files.insert(*id, inc);
    }

    /// After a sync answered by incarnation `now`: the ids not durable there (written to
    /// another incarnation), which stay tracked so that every later sync says so too,
    /// until the file is written again or removed. Ids the host itself failed stay tracked.
    fn settle(&mut self, ids: &[ExtentId], now: u64, failed: &HashSet<ExtentId>) -> Vec<ExtentId> {
        let mut lost = Vec::new();
        for id in ids {
            let inc = self.files.get(id).copied().or(self.dropped_at);
            if inc.is_some_and(|i| i != now) {
                lost.push(*id);
            } else if !failed.contains(id) {
                self.files.remove(id);
            }
        }
        lost
    }
}

impl RemoteDisk {
    pub fn new(link: Arc<HostLink>, uuid: &str, host_no: u32, term: Arc<AtomicI64>) -> RemoteDisk {
        RemoteDisk {
            link,
            uuid: uuid.to_string(),
            host_no,
            term,
            block_bytes: wire::BLOCK_BYTES_DEFAULT,
            written: parking_lot::Mutex::new(Written::default()),
        }
    }

    /// The host's connection, the disk's number there, and the host process that number
    /// is valid for (requests carry it: another process refuses them).
    fn at(&self) -> io::Result<(Arc<Client>, u32, u64)> {
        let c = self.link.client()?;
        let view = c.peer().view();
        let n = view
            .disks
            .iter()
            .find(|(_, u)| *u == self.uuid)
            .map(|d| d.0);
        match n {
            Some(n) => Ok((c, n, view.incarnation)),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("host {} does not serve disk {}", self.link.name, self.uuid),
            )),
        }
    }

    fn ctx(&self, incarnation: u64) -> Ctx {
        Ctx {
            term: self.term.load(Ordering::Acquire).max(0) as u64,
            class: Class::Client,
            incarnation,
        }
    }
}

/// A failed read as the read path handles it: bad bytes (or fewer than the metadata says)
/// are corruption, to be skipped and repaired; the rest are I/O errors.
fn read_error(e: WireError) -> ReadError {
    match e {
        WireError::Checksum { block } => {
            ReadError::Corrupt(format!("checksum mismatch in block {block} (remote)"))
        }
        // The host's file is shorter than the metadata says: corruption, repaired.
        WireError::BadRequest(why) if why.contains("past the extent's end") => {
            ReadError::Corrupt(format!("remote: {why}"))
        }
        // Anything else is the protocol's (a refused hello, a bad frame): not the bytes.
        WireError::BadRequest(why) => ReadError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("extent service: {why}"),
        )),
        e => ReadError::Io(e.into()),
    }
}

impl RemoteIo for RemoteDisk {
    fn write(
        &self,
        id: &ExtentId,
        data: &[u8],
        sums: &[[u8; 32]],
        (shard, epoch): ShardEpoch,
    ) -> io::Result<()> {
        let (c, disk, inc) = self.at()?;
        // The server refuses the write unless it is process `inc`: the file went there.
        let w = WriteReq {
            disk,
            id: to_wire(id),
            shard,
            epoch,
            block_bytes: self.block_bytes,
            sums: sums.to_vec(),
        };
        c.write(self.ctx(inc), &w, data)?;
        self.written.lock().note(id, inc);
        Ok(())
    }

    fn read_into(
        &self,
        id: &ExtentId,
        sums: &[[u8; 32]],
        off: usize,
        buf: &mut [u8],
    ) -> Result<(), ReadError> {
        let span = (off as u64, buf.len() as u64);
        let (c, disk, inc) = self.at().map_err(ReadError::Io)?;
        let r = ReadReq::covering(disk, to_wire(id), span, self.block_bytes, sums);
        let data = c.read(self.ctx(inc), &r).map_err(read_error)?;
        if data.len() != buf.len() {
            return Err(ReadError::Corrupt(format!(
                "remote read gave {} of {} bytes",
                data.len(),
                buf.len()
            )));
        }
        buf.copy_from_slice(&data);
        Ok(())
    }

    fn sync(&self, ids: &[ExtentId]) -> io::Result<Vec<ExtentId>> {
        let wire_ids: Vec<wire::ExtentId> = ids.iter().map(to_wire).collect();
        let (c, disk, inc) = self.at()?;
        let failed: HashSet<ExtentId> = c
            .sync(self.ctx(inc), disk, &wire_ids)?
            .iter()
            .map(from_wire)
            .collect();
        let lost = self.written.lock().settle(ids, inc, &failed);
        if !lost.is_empty() {
            tracing::error!(host = %self.link.name, disk = %self.uuid, files = lost.len(),
                "the host restarted after these files were written and before they were synced: not durable there");
        }
        let mut out: HashSet<ExtentId> = failed;
        out.extend(lost);
        Ok(out.into_iter().collect())
    }

    fn remove(&self, id: &ExtentId) -> io::Result<()> {
        let (c, disk, inc) = self.at()?;
        // Not durable here any more either way: a failed removal leaves it to the reaper.
        self.written.lock().files.remove(id);
        c.remove(self.ctx(inc), disk, to_wire(id), None)?;
        Ok(())
    }

    fn probe(&self) -> io::Result<u64> {
        // Probes run every second on every disk: they see each outage of the host.
        let r = self
            .at()
            .and_then(|(c, disk, inc)| Ok(c.probe(self.ctx(inc), disk)?));
        self.link.note(&r);
        r
    }

    fn host_signals(&self) -> HostSignals {
        self.link.signals()
    }

    fn host_unreachable(&self) {
        self.link.mark_down("its probe hung or failed");
    }

    fn space(&self) -> io::Result<(u64, u64)> {
        let (c, disk, inc) = self.at()?;
        let s = c.space(self.ctx(inc), disk)?;
        Ok((s.total_bytes, s.free_bytes))
    }

    fn scan(&self) -> io::Result<Vec<(ExtentId, u64)>> {
        let (c, disk, inc) = self.at()?;
        let all = c.scan(self.ctx(inc), disk)?;
        Ok(all.iter().map(|(id, len)| (from_wire(id), *len)).collect())
    }

    fn remove_temps(&self) -> io::Result<usize> {
        let (c, disk, inc) = self.at()?;
        Ok(c.remove_temps(self.ctx(inc), disk)? as usize)
    }

    fn check(&self) -> anyhow::Result<()> {
        let (c, _, _) = self.at()?;
        if c.peer().host() != self.link.name {
            bail!(
                "host {} answers as {} at {}",
                self.link.name,
                c.peer().host(),
                c.peer().addr()
            );
        }
        Ok(())
    }

    fn host(&self) -> u32 {
        self.host_no
    }

    fn locator(&self) -> io::Result<(String, u32, u64)> {
        let (c, disk, inc) = self.at()?;
        Ok((c.peer().addr().to_string(), disk, inc))
    }

    fn stage_from(
        &self,
        src: &dyn RemoteIo,
        (id, len, tag): (&ExtentId, u64, u32),
        sums: &[[u8; 32]],
        (shard, epoch): ShardEpoch,
    ) -> io::Result<()> {
        let (src, src_disk, src_incarnation) = src.locator()?;
        let (client, dst_disk, inc) = self.at()?;
        let c = CopyReq {
            src,
            src_disk,
            src_incarnation,
            dst_disk,
            id: to_wire(id),
            len,
            block_bytes: self.block_bytes,
            sums: sums.to_vec(),
            shard,
            epoch,
            tag,
        };
        let ctx = Ctx {
            class: Class::Recovery,
            ..self.ctx(inc)
        };
        client.copy_from(ctx, &c)?;
        // Bounded by the copies in flight: each is installed or discarded next.
        self.written.lock().staged.insert((*id, tag), inc);
        Ok(())
    }

    fn prepare_pulls(&self, srcs: &[Arc<dyn RemoteIo>]) -> io::Result<u32> {
        let mut addrs: Vec<String> = srcs
            .iter()
            .filter_map(|s| s.locator().ok())
            .map(|l| l.0)
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs.truncate(wire::CONNECT_SOURCES_MAX);
        let (c, _, inc) = self.at()?;
        let ctx = Ctx {
            class: Class::Recovery,
            ..self.ctx(inc)
        };
        Ok(c.connect_sources(ctx, &addrs)?)
    }

    fn install(&self, id: &ExtentId, tag: u32, fence: ShardEpoch) -> io::Result<()> {
        let (c, disk, inc) = self.at()?;
        // The staged bytes went to the incarnation they were staged on (not synced there).
        let staged = self.written.lock().staged.remove(&(*id, tag));
        // Installed only by the process it was staged on (another refuses: Restarted).
        let inc = staged.unwrap_or(inc);
        c.install(self.ctx(inc), disk, (to_wire(id), tag), fence)?;
        self.written.lock().note(id, inc);
        Ok(())
    }

    fn discard(&self, id: &ExtentId, tag: u32) -> io::Result<()> {
        self.written.lock().staged.remove(&(*id, tag));
        let (c, disk, inc) = self.at()?;
        Ok(c.discard(self.ctx(inc), disk, to_wire(id), tag)?)
    }
}

fn annotate(e: io::Error, path: &std::path::Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// A storage host's disks as the extent service serves them, through the store's code.
pub struct StoreBackend {
    store: Store,
    uuids: HashMap<u32, String>,
    /// Writes of one extent version one at a time: a retried write must not overlap its
    /// first try (whose failure cleanup would remove the retry's good file).
    writing: Vec<parking_lot::Mutex<()>>,
}

/// Stripes of `StoreBackend::writing`.
const WRITE_STRIPES: usize = 64;

impl StoreBackend {
    /// `disks`: (number on this host, directory, uuid). Makes the bucket directories.
    pub fn open(disks: &[(u32, PathBuf, String)], block_size: usize) -> io::Result<StoreBackend> {
        let mut list = Vec::new();
        let mut uuids = HashMap::new();
        for (n, dir, uuid) in disks {
            let ext = dir.join(crate::store::EXTENT_DIR);
            let made = match std::fs::DirBuilder::new().mode(0o700).create(&ext) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(annotate(e, &ext)),
            };
            make_buckets(&ext).map_err(|e| annotate(e, &ext))?;
            if made {
                // The new directory's entry, before any extent file in it counts as durable.
                std::fs::File::open(dir)?.sync_all()?;
            }
            list.push(Arc::new(Disk::new(*n, dir.clone(), DiskState::Up)));
            uuids.insert(*n, uuid.clone());
        }
        Ok(StoreBackend {
            store: Store::new(list, block_size),
            uuids,
            writing: (0..WRITE_STRIPES)
                .map(|_| parking_lot::Mutex::new(()))
                .collect(),
        })
    }

    fn disk(&self, n: u32) -> io::Result<Arc<Disk>> {
        self.store
            .disk(n)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }
}

impl DiskBackend for StoreBackend {
    fn disks(&self) -> Vec<DiskInfo> {
        let mut v: Vec<DiskInfo> = self
            .store
            .disks()
            .iter()
            .map(|d| DiskInfo {
                disk: d.id,
                uuid: self.uuids[&d.id].clone(),
                fence_dir: d.root.clone(),
            })
            .collect();
        v.sort_by_key(|d| d.disk);
        v
    }

    /// A second write of a version (a retry, or a repair of a bad copy) replaces the file
    /// atomically: the server has checked the bytes against the metadata's sums.
    fn write_extent(&self, disk: u32, id: wire::ExtentId, bytes: &[u8]) -> io::Result<()> {
        let d = self.disk(disk)?;
        let stripe = (id.inode ^ id.index.rotate_left(17) ^ id.version.rotate_left(31)) as usize;
        let _one = self.writing[stripe % WRITE_STRIPES].lock();
        let id = from_wire(&id);
        // The fence is the server's (checked before this call); local disks ignore it.
        match self.store.write_extent(&d, &id, bytes, (0, 0)) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.store.rewrite_extent(&d, &id, bytes, (0, 0))
            }
            r => r,
        }
    }

    fn read(&self, disk: u32, id: wire::ExtentId, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let d = self.disk(disk)?;
        let f = self.store.open_extent(&d, &from_wire(&id))?;
        let _op = d.op();
        let size = f.metadata()?.len();
        let n = len.min(size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; n];
        f.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// A file removed meanwhile is not a failure (as on a local disk); any other failure
    /// fails every file of the request (the store reports errors per disk).
    fn sync(&self, disk: u32, ids: &[wire::ExtentId]) -> io::Result<Vec<wire::ExtentId>> {
        self.disk(disk)?;
        let files: Vec<(u32, ExtentId)> = ids.iter().map(|i| (disk, from_wire(i))).collect();
        match self.store.sync_extents(&files).remove(&disk) {
            None => Ok(Vec::new()),
            Some(_) => Ok(ids.to_vec()),
        }
    }

    fn remove(&self, disk: u32, id: wire::ExtentId) -> io::Result<()> {
        let d = self.disk(disk)?;
        self.store.remove_extent(&d, &from_wire(&id));
        Ok(())
    }

    fn probe(&self, disk: u32) -> io::Result<()> {
        self.disk(disk)?
            .probe_labelled(foreshard_cluster::node::NODE_LABEL)
    }

    fn space(&self, disk: u32) -> io::Result<Space> {
        let (total_bytes, free_bytes) = self.disk(disk)?.space()?;
        Ok(Space {
            total_bytes,
            free_bytes,
        })
    }

    fn scan(
        &self,
        disk: u32,
        after: Option<wire::ExtentId>,
        limit: usize,
    ) -> io::Result<(Vec<(wire::ExtentId, u64)>, bool)> {
        let all = self.disk(disk)?.scan()?;
        let all = all.iter().map(|(id, len)| (to_wire(id), *len)).collect();
        Ok(scan_page(all, after, limit))
    }

    fn remove_temps(&self, disk: u32) -> io::Result<u64> {
        Ok(self.disk(disk)?.remove_temps()? as u64)
    }

    fn stage(&self, disk: u32, id: wire::ExtentId, tag: u32, bytes: &[u8]) -> io::Result<()> {
        let d = self.disk(disk)?;
        let (f, _) = self.store.create_staging(&d, &from_wire(&id), tag, false)?;
        f.write_all_at(bytes, 0)
    }

    fn install(&self, disk: u32, id: wire::ExtentId, tag: u32) -> io::Result<()> {
        let d = self.disk(disk)?;
        // The server checked the fence; local disks ignore it.
        self.store.install_staging(&d, &from_wire(&id), tag, (0, 0))
    }

    fn discard(&self, disk: u32, id: wire::ExtentId, tag: u32) -> io::Result<()> {
        let d = self.disk(disk)?;
        self.store.discard_staging(&d, &from_wire(&id), tag);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{block_sums, ReadError};
    use foreshard_cluster::wire::{ClientConfig, Server, ServerConfig};
    use std::net::SocketAddr;

    const SECRET: [u8; 32] = [7; 32];
    const BS: usize = 16 * 1024;

    struct Loop {
        rt: tokio::runtime::Runtime,
        _server: Server,
        host_dir: tempfile::TempDir,
        store: Store,
        term: Arc<AtomicI64>,
    }

    /// A storage host on 127.0.0.1 serving one disk (the store's own files), and a store
    /// whose disk 5 is that disk over the extent service.
    fn loopback() -> Loop {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let host_dir = tempfile::tempdir().unwrap();
        let dir = host_dir.path().join("d0");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(foreshard_cluster::node::NODE_LABEL), b"{}").unwrap();
        let server = serve(&rt, &host_dir, "127.0.0.1:0".parse().unwrap());
        let cc = ClientConfig::new("t", "m1", SECRET);
        let (h, addr) = (rt.handle().clone(), server.local_addr());
        let connect: Connect = Box::new(move || Ok(Client::connect(h.clone(), addr, cc.clone())?));
        let term = Arc::new(AtomicI64::new(3));
        let io = RemoteDisk {
            block_bytes: BS as u32,
            ..RemoteDisk::new(
                Arc::new(HostLink::new("h1", connect)),
                "uuid-a",
                1,
                term.clone(),
            )
        };
        let disk = Disk::remote(5, "node://h1/uuid-a".into(), DiskState::Up, Arc::new(io));
        Loop {
            rt,
            _server: server,
            host_dir,
            store: Store::new(vec![Arc::new(disk)], BS),
            term,
        }
    }

    /// The storage host's process: a new one (a new incarnation) on every call.
    fn serve(
        rt: &tokio::runtime::Runtime,
        host_dir: &tempfile::TempDir,
        addr: SocketAddr,
    ) -> Server {
        let dir = host_dir.path().join("d0");
        let backend = StoreBackend::open(&[(0, dir, "uuid-a".into())], BS).unwrap();
        let backend = Arc::new(backend);
        // A restart's old listener goes when its aborted task is dropped: soon, not at once.
        for _ in 0..100 {
            let cfg = ServerConfig::new("t", "h1", SECRET);
            match rt.block_on(Server::bind(addr, cfg, backend.clone())) {
                Ok(s) => return s,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{addr} still in use")
    }

    impl Loop {
        /// The host's process killed and started again at the same address.
        fn restart(&mut self) {
            let addr = self._server.local_addr();
            self._server.shutdown();
            self._server = serve(&self.rt, &self.host_dir, addr);
        }

        /// The file the host keeps the extent in (tests damage it there).
        fn host_path(&self, id: &ExtentId) -> PathBuf {
            Disk::new(0, self.host_dir.path().join("d0"), DiskState::Up).extent_path(id)
        }
    }

    /// Files written before the host restarted and not synced then are reported not
    /// durable by the next sync (the host's own sync skips missing files: on a host only
    /// the reaper removes them), files written after it sync normally.
    #[test]
    fn a_sync_after_the_host_restarted_reports_earlier_writes_lost() {
        let mut l = loopback();
        let disk = l.store.disk(5).unwrap();
        let id = |version| ExtentId {
            ino: 3,
            index: 0,
            version,
        };
        let data = vec![7u8; 20_000];
        l.store.write_extent(&disk, &id(1), &data, (1, 1)).unwrap();
        l.store.write_extent(&disk, &id(2), &data, (1, 1)).unwrap();
        assert!(l.store.sync_extents(&[(5, id(1))]).is_empty());
        l.restart();
        // The crash took the unsynced file (the synced one stays).
        std::fs::remove_file(l.host_path(&id(2))).unwrap();
        // The first request after the restart finds the old connection dead and opens a
        // new one: the new incarnation is seen there.
        let _ = disk.probe();
        disk.probe().unwrap();
        l.store.write_extent(&disk, &id(3), &data, (1, 1)).unwrap();
        let failed = l.store.sync_extents(&[(5, id(2)), (5, id(3))]);
        assert!(failed.contains_key(&5), "a lost write reported durable");
        // Every later sync says so too (the barrier retries what failed), until the file
        // is written again; the files written after the restart sync.
        assert!(l.store.sync_extents(&[(5, id(2))]).contains_key(&5));
        assert!(l.store.sync_extents(&[(5, id(3))]).is_empty());
        assert!(l.store.sync_extents(&[(5, id(1))]).is_empty());
        l.store
            .rewrite_extent(&disk, &id(2), &data, (1, 1))
            .unwrap();
        assert!(l.store.sync_extents(&[(5, id(2))]).is_empty());
    }

    #[test]
    fn store_calls_on_a_remote_disk() {
        let l = loopback();
        let _rt = &l.rt;
        let disk = l.store.disk(5).unwrap();
        assert!(disk.is_remote() && disk.host() == 1);
        let id = ExtentId {
            ino: 9,
            index: 2,
            version: 4,
        };
        let data: Vec<u8> = (0..40_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let sums = block_sums(&data, BS);
        l.store.write_extent(&disk, &id, &data, (1, 1)).unwrap();
        assert_eq!(std::fs::read(l.host_path(&id)).unwrap(), data);
        let got = l
            .store
            .read_verified(&disk, &id, &sums, BS, 20_000)
            .unwrap();
        assert_eq!(got, &data[BS..BS + 20_000]);
        let tail = l
            .store
            .read_verified(&disk, &id, &sums, 2 * BS, 40_000 - 2 * BS);
        assert_eq!(tail.unwrap(), &data[2 * BS..]);
        // A flipped byte on the host: both ends check, the read says corrupt and counts it.
        let mut bad = data.clone();
        bad[BS + 5] ^= 1;
        std::fs::write(l.host_path(&id), &bad).unwrap();
        assert!(matches!(
            l.store.read_verified(&disk, &id, &sums, BS, BS),
            Err(ReadError::Corrupt(_))
        ));
        assert_eq!(disk.checksum_errors.load(Ordering::Relaxed), 1);
        assert!(l.store.read_verified(&disk, &id, &sums, 0, BS).is_ok());
        // Repair replaces the copy (with bytes the caller verified).
        l.store.rewrite_extent(&disk, &id, &data, (1, 1)).unwrap();
        assert!(l.store.read_verified(&disk, &id, &sums, BS, BS).is_ok());
        assert_eq!(disk.scan().unwrap(), vec![(id, data.len() as u64)]);
        assert!(l.store.sync_extents(&[(5, id)]).is_empty());
        disk.probe().unwrap();
        assert!(disk.space().unwrap().0 > 0);
        disk.check_label("any").unwrap();
        let gone = ExtentId { version: 5, ..id };
        assert!(matches!(
            l.store.read_verified(&disk, &gone, &sums, 0, BS),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound
        ));
        l.store.remove_extent(&disk, &id);
        assert_eq!(disk.scan().unwrap(), vec![]);
        assert_eq!(disk.remove_temps().unwrap(), 0);
        assert!(l.store.open_extent(&disk, &id).is_err());
    }

    #[test]
    fn a_remote_disk_refuses_a_stale_term_and_epoch() {
        let l = loopback();
        let disk = l.store.disk(5).unwrap();
        let id = ExtentId {
            ino: 1,
            index: 0,
            version: 1,
        };
        l.store.write_extent(&disk, &id, b"abc", (7, 4)).unwrap();
        let old = ExtentId { version: 2, ..id };
        let e = l
            .store
            .write_extent(&disk, &old, b"abc", (7, 3))
            .unwrap_err();
        assert!(e.to_string().contains("fenced"), "{e}");
        l.term.store(2, Ordering::Release);
        let e = l
            .store
            .write_extent(&disk, &old, b"abc", (7, 4))
            .unwrap_err();
        assert!(e.to_string().contains("fenced"), "{e}");
        assert!(disk.probe().is_err(), "a deposed term still probes");
        assert_eq!(disk.io_errors.load(Ordering::Relaxed), 2);
    }
}
