use super::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::FileExt;

const REAL_TRACE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/data/traces/hp_hplajw_1week.csv.gz"
);

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if name.ends_with(".gz") {
        let mut e =
            flate2::write::GzEncoder::new(File::create(&p).unwrap(), flate2::Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap();
    } else {
        std::fs::write(&p, text).unwrap();
    }
    p
}

fn read_all(p: &Path) -> anyhow::Result<Vec<Record>> {
    open(p)?.collect()
}

fn rec(time_us: u64, op: Op, offset: u64, size: u32, volume: &str) -> Record {
    Record {
        time_us,
        op,
        offset,
        size,
        volume: volume.into(),
    }
}

#[test]
fn trace_parses_our_csv_plain_and_gzip() {
    let d = tempfile::tempdir().unwrap();
    let text = "timestamp_us,op,offset_bytes,size_bytes,volume\n\
                100,R,4096,4096,a\n\
                150,w,0,512,b\r\n\
                \n\
                149,Write,8192,1024,a\n";
    let want = vec![
        rec(100, Op::Read, 4096, 4096, "a"),
        rec(150, Op::Write, 0, 512, "b"),
        rec(149, Op::Write, 8192, 1024, "a"),
    ];
    assert_eq!(read_all(&write(d.path(), "t.csv", text)).unwrap(), want);
    assert_eq!(read_all(&write(d.path(), "t.csv.gz", text)).unwrap(), want);
    // Gzip is found by its magic bytes, not the name; two members are read as one stream.
    let p = d.path().join("two-members");
    let mut bytes = std::fs::read(d.path().join("t.csv.gz")).unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b"200,R,0,1,c\n").unwrap();
    bytes.extend(e.finish().unwrap());
    std::fs::write(&p, bytes).unwrap();
    assert_eq!(read_all(&p).unwrap().len(), 4);
    // Columns are found by name: another order and an extra column.
    let p = write(
        d.path(),
        "o.csv",
        "volume,size_bytes,extra,offset_bytes,op,timestamp_us\nv,8,x,16,READ,7\n",
    );
    assert_eq!(read_all(&p).unwrap(), vec![rec(7, Op::Read, 16, 8, "v")]);
    // A header alone, and an empty file, hold no records.
    assert!(read_all(&write(d.path(), "h.csv", &format!("{HEADER}\n")))
        .unwrap()
        .is_empty());
    assert!(read_all(&write(d.path(), "e.csv", "")).unwrap().is_empty());
}

#[test]
fn trace_parses_msr_cambridge() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "CAMRESHMSA01-lvm1.csv",
        "128166372003061629,hm,1,Read,3218989056,4096,5566\n\
         128166372016382155,hm,1,Write,3219001344,65536,6320\n\
         128166372026382245,src1,0,read,0,512,100\n",
    );
    let got = read_all(&p).unwrap();
    assert_eq!(
        got,
        vec![
            rec(0, Op::Read, 3218989056, 4096, "hm_1"),
            rec(1332052, Op::Write, 3219001344, 65536, "hm_1"),
            rec(2332061, Op::Read, 0, 512, "src1_0"),
        ]
    );
}

#[test]
fn trace_rejects_bad_lines_with_line_number() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        ("1,X,0,4096,a", "bad op"),
        ("1,R,0,0,a", "outside 1..="),
        ("1,R,0,67108865,a", "outside 1..="),
        (
            "1,R,18446744073709551615,4096,a",
            "beyond the largest file offset",
        ),
        (
            "1,R,9223372036854775807,1,a",
            "beyond the largest file offset",
        ),
        ("1,R,-5,4096,a", "bad offset_bytes"),
        ("1,R,0,4096", "4 columns"),
        ("x,R,0,4096,a", "bad timestamp_us"),
        ("1,R,0,4096,a", "goes back"),
    ];
    for (line, what) in cases {
        let text = format!("{HEADER}\n5000000,R,0,4096,a\n{line}\n");
        let p = write(d.path(), "bad.csv", &text);
        let err = format!("{:#}", read_all(&p).unwrap_err());
        assert!(
            err.contains("bad.csv:3:") && err.contains(what),
            "{line:?}: {err}"
        );
    }
    let p = write(d.path(), "nohdr.csv", "time,op,offset\n1,R,0\n");
    let err = format!("{:#}", read_all(&p).unwrap_err());
    assert!(
        err.contains("nohdr.csv:1:") && err.contains("size_bytes"),
        "{err}"
    );
    let p = write(d.path(), "junk.csv", "1 2 3\n");
    let err = format!("{:#}", read_all(&p).unwrap_err());
    assert!(err.contains("junk.csv:1: unknown format"), "{err}");
    let p = write(
        d.path(),
        "msr.csv",
        "1,h,0,Read,0,4096,1\n1,h,x,Read,0,4096,1\n",
    );
    let err = format!("{:#}", read_all(&p).unwrap_err());
    assert!(err.contains("msr.csv:2: bad DiskNumber"), "{err}");
    // A truncated gzip stream is an error, not a silent end.
    let full = std::fs::read(write(d.path(), "t.gz", &format!("{HEADER}\n1,R,0,1,a\n"))).unwrap();
    std::fs::write(d.path().join("cut.gz"), &full[..full.len() - 6]).unwrap();
    assert!(read_all(&d.path().join("cut.gz")).is_err());
    // Small jitter backwards is kept in file order.
    let p = write(
        d.path(),
        "j.csv",
        &format!("{HEADER}\n2000000,R,0,1,a\n1500000,R,0,1,a\n"),
    );
    assert_eq!(read_all(&p).unwrap()[1].time_us, 1_500_000);
}

#[test]
fn trace_rejects_bad_volume_names() {
    let d = tempfile::tempdir().unwrap();
    let long = "v".repeat(VOLUME_NAME_BYTES_MAX + 1);
    for name in ["", ".", "..", "a/b", "/abs", "a\0b", long.as_str()] {
        let p = write(d.path(), "v.csv", &format!("{HEADER}\n1,R,0,1,{name}\n"));
        let err = format!("{:#}", read_all(&p).unwrap_err());
        assert!(
            err.contains("v.csv:2:") && err.contains("volume"),
            "{name:?}: {err}"
        );
    }
    let ok = "v".repeat(VOLUME_NAME_BYTES_MAX);
    let p = write(d.path(), "v.csv", &format!("{HEADER}\n1,R,0,1,{ok}\n"));
    assert_eq!(read_all(&p).unwrap().len(), 1);
}

#[test]
fn trace_written_model_splits_and_replaces() {
    let mut w = Written::default();
    w.insert(0, 100, 1);
    w.insert(40, 60, 2); // splits 1
    w.insert(90, 120, 3); // cuts 1's tail
    w.insert(10, 45, 4); // cuts 1's middle piece and 2's head
    let got: Vec<_> = w.map.iter().map(|(&s, &(e, q))| (s, e, q)).collect();
    assert_eq!(
        got,
        vec![
            (0, 10, 1),
            (10, 45, 4),
            (45, 60, 2),
            (60, 90, 1),
            (90, 120, 3)
        ]
    );
    assert_eq!(
        w.pieces(50, 130),
        vec![
            (50, 60, Some(2)),
            (60, 90, Some(1)),
            (90, 120, Some(3)),
            (120, 130, None)
        ]
    );
    w.insert(200, 210, 5);
    assert_eq!(
        w.pieces(115, 205),
        vec![(115, 120, Some(3)), (120, 200, None), (200, 205, Some(5))]
    );
    w.insert(0, 300, 6); // covers all
    assert_eq!(w.pieces(0, 400), vec![(0, 300, Some(6)), (300, 400, None)]);
    // A byte-by-byte reference model agrees on random writes.
    let mut rng = Rng(7);
    let mut w = Written::default();
    let mut bytes = vec![None; 512];
    for q in 1..400 {
        let s = rng.below(500);
        let e = s + 1 + rng.below(512 - s - 1);
        w.insert(s, e, q);
        bytes[s as usize..e as usize].fill(Some(q));
    }
    for (s, e, q) in w.pieces(0, 512) {
        assert!(bytes[s as usize..e as usize].iter().all(|&b| b == q));
    }
}

#[test]
fn trace_pattern_depends_on_seq_and_offset_only() {
    let mut a = vec![0u8; 100];
    fill_pattern(9, 13, &mut a);
    let mut b = vec![0u8; 50];
    fill_pattern(9, 50, &mut b);
    assert_eq!(&a[37..87], &b[..]);
    let mut c = vec![0u8; 100];
    fill_pattern(10, 13, &mut c);
    assert_ne!(a, c);
    assert!(a.iter().filter(|&&x| x == 0).count() < 10);
}

fn small_params() -> SynthParams {
    SynthParams {
        extents_per_volume: 16,
        extent_size: 256 << 10,
        requests: 3000,
        groups: 2,
        nightly: 2,
        ..SynthParams::default()
    }
}

#[test]
fn trace_synth_is_deterministic() {
    let d = tempfile::tempdir().unwrap();
    let files = |seed: u64, tag: &str| {
        let p = SynthParams {
            seed,
            ..small_params()
        };
        let (out, truth) = (
            d.path().join(format!("{tag}.csv.gz")),
            d.path().join(format!("{tag}.json")),
        );
        write_synth(&p, &out, &truth).unwrap();
        (std::fs::read(out).unwrap(), std::fs::read(truth).unwrap())
    };
    let a = files(1, "a");
    assert_eq!(a, files(1, "b"));
    let c = files(2, "c");
    assert_ne!(a.0, c.0);
    assert_ne!(a.1, c.1);
}

#[test]
fn trace_synth_plants_what_the_truth_says() {
    let p = SynthParams::default();
    let (records, truth) = synth(&p).unwrap();
    assert_eq!(records.len() as u64, p.requests);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("p.csv.gz");
    let t = write_synth(&p, &out, &d.path().join("p.json")).unwrap();
    let parsed = read_all(&out).unwrap();
    assert_eq!(parsed.len(), records.len());
    assert!(parsed.iter().zip(&records).all(|(a, (b, _))| a == b));
    assert_eq!(t.hot, truth.hot);

    let ext = |r: &Record| ExtentRef {
        path: format!("/{}", r.volume),
        index: r.offset / p.extent_size,
    };
    // Every request stays inside one extent, 4 KiB aligned, 4..64 KiB.
    for (r, _) in &records {
        assert_eq!(r.offset / p.extent_size, (r.end() - 1) / p.extent_size);
        assert!(r.offset % 4096 == 0 && r.size % 4096 == 0);
        assert!((4096..=65536).contains(&r.size));
    }
    assert!(records.windows(2).all(|w| w[0].0.time_us < w[1].0.time_us));
    // The planted sets are disjoint and as large as asked.
    let hot: BTreeSet<_> = truth.hot.iter().cloned().collect();
    let nightly: BTreeSet<_> = truth.nightly.iter().cloned().collect();
    let grouped: BTreeSet<_> = truth.groups.iter().flatten().cloned().collect();
    assert_eq!(hot.len(), 13); // 10% of 128
    assert_eq!(nightly.len(), 4);
    assert_eq!(grouped.len(), 24);
    assert_eq!(truth.groups.len(), 6);
    assert!(hot.is_disjoint(&nightly) && hot.is_disjoint(&grouped));
    assert!(nightly.is_disjoint(&grouped));
    // The hot set takes about hot_share of the single requests.
    let singles: Vec<&Record> = records
        .iter()
        .filter(|(_, k)| *k == Kind::Single)
        .map(|(r, _)| r)
        .collect();
    let hot_singles = singles.iter().filter(|r| hot.contains(&ext(r))).count();
    let share = hot_singles as f64 / singles.len() as f64;
    assert!((share - p.hot_share).abs() < 0.03, "hot share {share}");
    // 13 hot extents take ~70% of single requests: far above any other extent.
    let mut counts: HashMap<ExtentRef, usize> = HashMap::new();
    for r in &singles {
        *counts.entry(ext(r)).or_default() += 1;
    }
    let coldest_hot = hot.iter().map(|e| counts[e]).min().unwrap();
    let busiest_other = counts
        .iter()
        .filter(|(e, _)| !hot.contains(e))
        .map(|(_, &c)| c)
        .max()
        .unwrap();
    assert!(
        coldest_hot > 3 * busiest_other,
        "{coldest_hot} vs {busiest_other}"
    );
    // Every burst is consecutive and touches each member of its group once.
    let mut i = 0;
    let mut bursts = 0;
    while i < records.len() {
        if let Kind::Burst { burst, group } = records[i].1 {
            let n = p.group_size as usize;
            let run = &records[i..i + n];
            assert!(
                run.iter().all(|(_, k)| *k == records[i].1),
                "burst {burst} split"
            );
            let members: BTreeSet<_> = run.iter().map(|(r, _)| ext(r)).collect();
            let want: BTreeSet<_> = truth.groups[group].iter().cloned().collect();
            assert_eq!(members, want);
            bursts += 1;
            i += n;
        } else {
            i += 1;
        }
    }
    assert_eq!(bursts, 750); // 15% of 20000 requests in bursts of 4
                             // Nightly extents are touched only during the night hour, and on every day.
    let mut days = BTreeSet::new();
    for (r, k) in &records {
        if nightly.contains(&ext(r)) {
            assert_eq!(*k, Kind::Nightly);
            assert_eq!((r.time_us / US_PER_HOUR) % 24, u64::from(p.night_hour));
            days.insert(r.time_us / US_PER_DAY);
        }
    }
    assert_eq!(days.len(), p.days as usize);
    // Daily cycle: a busy hour sees several times the traffic of a quiet one.
    let mut per_hour = [0u64; 24];
    for (r, _) in &records {
        per_hour[((r.time_us / US_PER_HOUR) % 24) as usize] += 1;
    }
    let day: u64 = per_hour[8..18].iter().sum::<u64>() / 10;
    let night: u64 = (per_hour[..2].iter().sum::<u64>()
        + per_hour[3..8].iter().sum::<u64>()
        + per_hour[18..].iter().sum::<u64>())
        / 13;
    assert!(day > 3 * night, "day {day}/h vs night {night}/h");
    // The truth names volumes and extents as the mount sees them.
    assert_eq!(truth.volumes[1].name, "vol1");
    assert_eq!(truth.volumes[1].size_bytes, 64 << 20);
    assert!(truth
        .hot
        .iter()
        .all(|e| e.index < 64 && e.path.starts_with("/vol")));
}

#[test]
fn trace_synth_rejects_impossible_params() {
    let bad = [
        SynthParams {
            extents_per_volume: 10,
            ..SynthParams::default()
        },
        SynthParams {
            extent_size: 1000,
            ..SynthParams::default()
        },
        SynthParams {
            hot_share: 1.5,
            ..SynthParams::default()
        },
        SynthParams {
            night_hour: 24,
            ..SynthParams::default()
        },
    ];
    for p in bad {
        assert!(synth(&p).is_err(), "{p:?}");
    }
}

fn fast(verify: bool) -> ReplayOpts {
    ReplayOpts {
        speed: None,
        verify,
        limit: None,
        direct: false,
    }
}

#[test]
fn trace_replay_verifies_synthetic_trace() {
    let d = tempfile::tempdir().unwrap();
    let mount = d.path().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let trace = d.path().join("s.csv");
    let (records, _) = synth(&small_params()).unwrap();
    let records: Vec<Record> = records.into_iter().map(|(r, _)| r).collect();
    write_csv(&trace, &records).unwrap();
    let s = replay(&trace, &mount, &fast(true)).unwrap();
    assert_eq!(s.verify_errors, 0, "{:?}", s.mismatches);
    assert_eq!(s.requests, 3000);
    assert_eq!(s.reads + s.writes, 3000);
    assert_eq!(s.volumes, 2);
    assert!(s.lag_ms_max.is_none());
    for v in ["vol0", "vol1"] {
        let end = records
            .iter()
            .filter(|r| r.volume == v)
            .map(Record::end)
            .max()
            .unwrap();
        assert_eq!(std::fs::metadata(mount.join(v)).unwrap().len(), end);
    }
    // A limit replays only the first requests (not verified: the files now hold data
    // this shorter replay does not write).
    let again = replay(
        &trace,
        &mount,
        &ReplayOpts {
            limit: Some(100),
            ..fast(false)
        },
    )
    .unwrap();
    assert_eq!(again.requests, 100);
}

#[test]
fn trace_replay_sparse_reads_zeros_and_sizes() {
    let d = tempfile::tempdir().unwrap();
    let trace = write(
        d.path(),
        "t.csv",
        &format!(
            "{HEADER}\n\
             0,W,1048576,8192,a\n\
             1,R,0,4096,a\n\
             2,R,1044480,8192,a\n\
             3,W,1050624,4096,a\n\
             4,R,1048576,8192,a\n\
             5,R,5000000,100,b\n"
        ),
    );
    let s = replay(&trace, d.path(), &fast(true)).unwrap();
    assert_eq!(s.verify_errors, 0, "{:?}", s.mismatches);
    assert_eq!((s.reads, s.writes), (4, 2));
    assert_eq!(
        (s.bytes_read, s.bytes_written),
        (4096 + 8192 + 8192 + 100, 12288)
    );
    let a = std::fs::read(d.path().join("a")).unwrap();
    assert_eq!(a.len(), 1048576 + 8192);
    assert!(a[..1048576].iter().all(|&b| b == 0));
    assert!(a[1048576..].iter().filter(|&&b| b == 0).count() < 200);
    // The second write replaced the tail of the first.
    let mut want = vec![0u8; 4096];
    fill_pattern(2, 1050624, &mut want);
    assert_eq!(&a[1050624..1054720], &want[..]);
    let b = std::fs::metadata(d.path().join("b")).unwrap();
    assert_eq!(b.len(), 5000100);
    // Sparse: the never-written volume has (almost) no blocks.
    use std::os::unix::fs::MetadataExt;
    assert!(b.blocks() * 512 < 1 << 20, "{} blocks", b.blocks());
    // An existing longer file is never shortened.
    let big = d.path().join("a");
    File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    replay(&trace, d.path(), &fast(false)).unwrap();
    assert_eq!(std::fs::metadata(&big).unwrap().len(), 4 << 20);
}

#[test]
fn trace_replay_verify_catches_tampering() {
    let d = tempfile::tempdir().unwrap();
    let mut sizes = BTreeMap::new();
    sizes.insert("v".to_string(), 1 << 20);
    let mut rp = Replayer::new(d.path(), &sizes, true, false).unwrap();
    rp.apply(&rec(0, Op::Write, 4096, 8192, "v")).unwrap();
    rp.apply(&rec(1, Op::Read, 0, 16384, "v")).unwrap();
    assert_eq!(rp.stats.verify_errors, 0);
    // Someone else changes a written byte and a never-written one.
    let f = File::options()
        .read(true)
        .write(true)
        .open(d.path().join("v"))
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, 5000).unwrap();
    f.write_all_at(&[!byte[0]], 5000).unwrap();
    f.write_all_at(&[1], 20000).unwrap();
    rp.apply(&rec(2, Op::Read, 4096, 4096, "v")).unwrap();
    rp.apply(&rec(3, Op::Read, 16384, 8192, "v")).unwrap();
    rp.apply(&rec(4, Op::Read, 8192, 4096, "v")).unwrap();
    assert_eq!(rp.stats.verify_errors, 2);
    let m = &rp.stats.mismatches;
    assert_eq!((m[0].offset, m[0].expected.as_str()), (5000, "write #1"));
    assert_eq!((m[1].offset, m[1].expected.as_str()), (20000, "zeros"));

    // Through replay(): a file with stray bytes where the trace reads unwritten space.
    let trace = write(
        d.path(),
        "t.csv",
        &format!("{HEADER}\n0,W,0,4096,w\n1,R,0,8192,w\n"),
    );
    let mnt = d.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(mnt.join("w"), vec![7u8; 8192]).unwrap();
    let s = replay(&trace, &mnt, &fast(true)).unwrap();
    assert_eq!(s.verify_errors, 1);
    assert_eq!(s.mismatches[0].offset, 4096);
}

#[test]
fn trace_replay_errors_are_clear() {
    let d = tempfile::tempdir().unwrap();
    let trace = write(d.path(), "t.csv", &format!("{HEADER}\n0,R,0,10,a\n"));
    let err = replay(&trace, &d.path().join("nope"), &fast(false)).unwrap_err();
    assert!(
        format!("{err:#}").contains("not an existing directory"),
        "{err:#}"
    );
    let err = replay(&d.path().join("missing.csv"), d.path(), &fast(false)).unwrap_err();
    assert!(
        format!("{err:#}").contains("missing.csv: cannot open"),
        "{err:#}"
    );
    for speed in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let opts = ReplayOpts {
            speed: Some(speed),
            ..fast(false)
        };
        assert!(replay(&trace, d.path(), &opts).is_err());
    }
}

#[test]
fn trace_replay_keeps_the_schedule() {
    let d = tempfile::tempdir().unwrap();
    // 300 ms of trace at 10x: about 30 ms.
    let trace = write(
        d.path(),
        "t.csv",
        &format!("{HEADER}\n1000000,W,0,4096,a\n1150000,R,0,4096,a\n1300000,R,0,4096,a\n"),
    );
    let opts = ReplayOpts {
        speed: Some(10.0),
        ..fast(true)
    };
    let s = replay(&trace, d.path(), &opts).unwrap();
    assert!(s.elapsed_s >= 0.03, "{}", s.elapsed_s);
    assert!(s.lag_ms_max.is_some() && s.lag_ms_mean.is_some());
    assert_eq!(s.verify_errors, 0);
}

#[test]
fn truth_file_sits_beside_the_trace() {
    assert_eq!(
        default_truth_path(Path::new("f/planted.csv.gz")),
        Path::new("f/planted.truth.json")
    );
}

#[test]
fn trace_real_hplajw_parses() {
    let path = Path::new(REAL_TRACE);
    if !path.exists() {
        eprintln!("skipping trace_real_hplajw_parses: {REAL_TRACE} is absent");
        return;
    }
    let s = stats(path, 1 << 20).unwrap();
    assert_eq!(s.requests, 44_519);
    assert_eq!(s.volumes.len(), 2);
    assert_eq!(s.volumes[0].name, "hplajw_disk0");
    assert_eq!((s.reads, s.writes), (13_040, 31_479));
    assert_eq!(s.extents, 257);
    assert!((s.span_hours - 167.5).abs() < 0.1, "{}", s.span_hours);
    assert!((s.top10_share - 0.72).abs() < 0.02, "{}", s.top10_share);
}
