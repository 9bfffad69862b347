use super::*;

const ATA_HDD: &str = include_str!("../../../fixtures/smart/ata-hdd.json");
const ATA_FAILING: &str = include_str!("../../../fixtures/smart/ata-failing.json");
const NVME: &str = include_str!("../../../fixtures/smart/nvme.json");
const SMARTCTL_ERROR: &str = include_str!("../../../fixtures/smart/smartctl-error.json");
const HEALTHY_PROM: &str = include_str!("../../../fixtures/smart/healthy.prom");
const FAILING_PROM: &str = include_str!("../../../fixtures/smart/failing.prom");

fn edit(text: &str, f: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(text).expect("fixture is JSON");
    f(&mut v);
    v.to_string()
}

#[test]
fn ata_hdd_decodes_packed_raw_values() {
    let h = parse_smartctl_json(ATA_HDD).expect("parses");
    assert_eq!(h.model_name.as_deref(), Some("ST4000VN008-2DR166"));
    assert_eq!(h.serial.as_deref(), Some("ZGY5A1B2"));
    assert_eq!(h.smart_passed, Some(true));
    assert_eq!(h.source, "/dev/sda");
    assert_eq!(h.temperature_c, Some(37.0));
    assert_eq!(h.power_on_hours, Some(22843));
    assert_eq!(h.smart.len(), 22);
    // Packed fields: the count, not the 48-bit number.
    assert_eq!(h.smart[&194], 37, "194 raw.value is 193274708005");
    assert_eq!(h.smart[&190], 37);
    assert_eq!(h.smart[&9], 22843, "9 is \"22843h+25m+42.123s\"");
    assert_eq!(h.smart[&240], 22610);
    assert_eq!(h.smart[&188], 0, "188 is \"0 0 0\"");
    assert_eq!(h.smart[&1], 208514322);
    assert_eq!(h.smart[&241], 41257882431);
    assert!(h.nvme.is_none());
    assert_eq!(
        h.model_attrs(),
        [
            Some(208514322.0),
            Some(0.0),
            Some(22843.0),
            Some(0.0),
            Some(0.0),
            Some(37.0),
            Some(0.0),
            Some(0.0)
        ]
    );
}

#[test]
fn attribute_194_uses_the_temperature_over_the_raw_field() {
    let mut h = parse_smartctl_json(ATA_HDD).expect("parses");
    h.smart.insert(194, 193274708005);
    h.temperature_c = Some(36.5);
    assert_eq!(h.model_attrs()[5], Some(36.5));
    h.temperature_c = None;
    assert_eq!(h.model_attrs()[5], Some(193274708005.0));
}

#[test]
fn ata_failing_keeps_the_data_and_the_verdict() {
    let h = parse_smartctl_json(ATA_FAILING).expect("a failing disk is not a parse error");
    assert_eq!(h.smart_passed, Some(false));
    assert_eq!(h.model_name.as_deref(), Some("HGST HUS724040ALA640"));
    assert_eq!(h.smart[&5], 1832);
    assert_eq!(h.smart[&187], 37);
    assert_eq!(h.smart[&197], 48);
    assert_eq!(h.smart[&198], 40);
    assert_eq!(h.smart[&3], 506, "\"506 (Average 497)\"");
    assert_eq!(h.temperature_c, Some(34.0));
    assert_eq!(
        h.model_attrs(),
        [
            Some(3932160.0),
            Some(1832.0),
            Some(58870.0),
            Some(37.0),
            None,
            Some(34.0),
            Some(48.0),
            Some(40.0)
        ]
    );
    // Exit-status bit 3 ("DISK FAILING") wins over a stale smart_status.
    let text = edit(ATA_FAILING, |v| v["smart_status"]["passed"] = true.into());
    let h = parse_smartctl_json(&text).expect("parses");
    assert_eq!(h.smart_passed, Some(false));
}

#[test]
fn nvme_maps_to_the_model_attributes() {
    let h = parse_smartctl_json(NVME).expect("parses");
    assert!(h.smart.is_empty());
    assert_eq!(
        h.model_name.as_deref(),
        Some("Samsung SSD 970 EVO Plus 1TB")
    );
    assert_eq!(h.serial.as_deref(), Some("S4EWNX0R123456A"));
    assert_eq!(h.smart_passed, Some(true));
    assert_eq!(h.temperature_c, Some(41.0));
    assert_eq!(h.power_on_hours, Some(9327));
    let n = h.nvme.clone().expect("nvme log");
    assert_eq!(
        n,
        NvmeHealth {
            critical_warning: Some(0),
            media_errors: Some(0),
            percentage_used: Some(3),
            available_spare: Some(100),
            available_spare_threshold: Some(10),
            num_err_log_entries: Some(2471),
            unsafe_shutdowns: Some(97),
            power_on_hours: Some(9327),
        }
    );
    // 2471 error-log entries are not a failure signal.
    assert_eq!(
        h.model_attrs(),
        [
            None,
            Some(0.0),
            Some(9327.0),
            Some(0.0),
            None,
            Some(41.0),
            Some(0.0),
            None
        ]
    );

    let text = edit(NVME, |v| {
        let log = &mut v["nvme_smart_health_information_log"];
        log["critical_warning"] = 4.into();
        log["media_errors"] = 12.into();
    });
    let a = parse_smartctl_json(&text).expect("parses").model_attrs();
    assert_eq!(a[1], Some(1.0), "critical warning -> a reallocation event");
    assert_eq!(a[3], Some(12.0));
    assert_eq!(a[6], Some(12.0));
}

#[test]
fn nvme_without_the_top_level_temperature_uses_the_log() {
    let text = edit(NVME, |v| {
        let o = v.as_object_mut().expect("object");
        o.remove("temperature");
        o.remove("power_on_time");
    });
    let h = parse_smartctl_json(&text).expect("parses");
    assert_eq!(h.temperature_c, Some(41.0));
    assert_eq!(h.power_on_hours, Some(9327));
}

#[test]
fn smartctl_error_documents_are_errors() {
    let e = parse_smartctl_json(SMARTCTL_ERROR).expect_err("open failed");
    assert!(e.msg.contains("Permission denied"), "{e}");
    assert!(e.msg.contains("exit status 2"), "{e}");
    assert_eq!(e.line, None);

    let unknown = r#"{"smartctl": {"version": [7, 3], "messages": [
        {"string": "/dev/vda: Unable to detect device type", "severity": "error"},
        {"string": "Please specify device type with the -d option.", "severity": "information"}],
        "exit_status": 1}}"#;
    let e = parse_smartctl_json(unknown).expect_err("no device type");
    assert!(e.msg.contains("Unable to detect device type"), "{e}");
    assert!(!e.msg.contains("Please specify"), "{e}");

    let bare = r#"{"smartctl": {"exit_status": 2}, "smart_status": {"passed": true}}"#;
    let e = parse_smartctl_json(bare).expect_err("bit 1 without messages");
    assert!(e.msg.contains("device open failed"), "{e}");
}

#[test]
fn error_messages_next_to_data_do_not_hide_the_data() {
    // Bit 2: some command failed, but the attributes were read.
    let text = edit(ATA_FAILING, |v| {
        v["smartctl"]["exit_status"] = 4.into();
        v["smartctl"]["messages"] =
            serde_json::json!([{"string": "Read SMART Error Log failed", "severity": "error"}]);
    });
    let h = parse_smartctl_json(&text).expect("data kept");
    assert_eq!(h.smart[&5], 1832);
    // Without data, the message is the error.
    let text = r#"{"smartctl": {"exit_status": 4, "messages": [
        {"string": "Read Device Identity failed: scsi error", "severity": "error"}]}}"#;
    let e = parse_smartctl_json(text).expect_err("nothing to use");
    assert!(e.msg.contains("Read Device Identity failed"), "{e}");
    let e = parse_smartctl_json("{}").expect_err("empty");
    assert!(e.msg.contains("no SMART data"), "{e}");
    let e = parse_smartctl_json("[1, 2]").expect_err("not an object");
    assert!(e.msg.contains("not an object"), "{e}");
}

#[test]
fn malformed_json_reports_the_line() {
    let e = parse_smartctl_json("{\n  \"a\": 1,\n  \"b\": \n}\n").expect_err("syntax");
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.msg.starts_with("not JSON"), "{e}");
    assert!(!e.msg.contains(" at line "), "line not repeated: {e}");
    // A file cut short mid-write.
    let cut = &ATA_HDD[..ATA_HDD.len() / 2];
    let e = parse_smartctl_json(cut).expect_err("truncated");
    assert_eq!(e.line, Some(cut.lines().count()), "{e}");
    assert!(e.to_string().starts_with("line "), "{e}");
}

#[test]
fn malformed_attribute_tables_are_errors() {
    let text = edit(ATA_HDD, |v| {
        v["ata_smart_attributes"]["table"][3]
            .as_object_mut()
            .expect("row")
            .remove("raw");
    });
    let e = parse_smartctl_json(&text).expect_err("no raw");
    assert!(e.msg.contains("table[3] (id 5)"), "{e}");
    let text = edit(ATA_HDD, |v| {
        v["ata_smart_attributes"]["table"][0]["id"] = 0.into()
    });
    assert!(parse_smartctl_json(&text).is_err());
    let text = edit(ATA_HDD, |v| {
        v["ata_smart_attributes"] = serde_json::json!({})
    });
    assert!(parse_smartctl_json(&text).is_err());
}

#[test]
fn raw_count_takes_the_leading_count() {
    assert_eq!(
        raw_count(Some(193274708005), Some("37 (Min/Max 18/45)")),
        Some(37)
    );
    assert_eq!(raw_count(Some(1), Some("1234h+05m")), Some(1234));
    assert_eq!(raw_count(Some(2748), Some("0x000000000abc")), Some(2748));
    assert_eq!(raw_count(Some(7), Some("")), Some(7));
    assert_eq!(raw_count(Some(7), None), Some(7));
    assert_eq!(raw_count(None, Some("12 (0 3)")), Some(12));
    assert_eq!(raw_count(None, Some("-")), None);
}

#[test]
fn healthy_textfile_takes_the_first_disk() {
    let h = parse_textfile(HEALTHY_PROM).expect("parses");
    assert_eq!(h.source, "/dev/sda");
    assert_eq!(h.model_name.as_deref(), Some("ST4000VN008-2DR166"));
    assert_eq!(h.serial.as_deref(), Some("ZGY5A1B2"));
    assert_eq!(h.smart_passed, Some(true));
    assert_eq!(h.temperature_c, Some(37.0));
    assert_eq!(h.power_on_hours, Some(22843));
    // /dev/sdb's 5 = 8 and 197 = 2 are not mixed in.
    assert_eq!(h.smart[&5], 0);
    assert_eq!(h.smart[&197], 0);
    // `%e` keeps 7 significant digits.
    assert_eq!(h.smart[&1], 208514300);
    assert_eq!(h.smart[&241], 41257880000);
    assert_eq!(h.smart.len(), 12);
    assert_eq!(
        h.model_attrs(),
        [
            Some(208514300.0),
            Some(0.0),
            Some(22843.0),
            Some(0.0),
            Some(0.0),
            Some(37.0),
            Some(0.0),
            Some(0.0)
        ]
    );
}

#[test]
fn failing_textfile() {
    let h = parse_textfile(FAILING_PROM).expect("parses");
    assert_eq!(h.source, "/dev/sdc");
    assert_eq!(h.smart_passed, Some(false));
    assert_eq!(h.model_name.as_deref(), Some("HGST HUS724040ALA640"));
    assert_eq!(h.serial.as_deref(), Some("PN2331PBG8TX3T"));
    assert_eq!(
        h.model_attrs(),
        [
            Some(3932160.0),
            Some(1832.0),
            Some(58870.0),
            Some(37.0),
            None,
            Some(34.0),
            Some(48.0),
            Some(40.0)
        ]
    );
    let info = FAILING_PROM
        .lines()
        .find(|l| l.starts_with("smartmon_device_info"))
        .expect("info line");
    let s = parse_sample(info).expect("parses");
    assert_eq!(
        s.label("model_family"),
        Some("Hitachi/HGST \"Ultrastar\" 7K4000, SATA")
    );
    assert_eq!(s.label("firmware_version"), Some("MFAOA8B0"));
}

#[test]
fn textfile_values_and_names() {
    let text = "\
smartmon_reallocated_sector_ct_raw_value{disk=\"/dev/sda\",smart_id=\"5\"} 1.5e+03
smartmon_temperature_celsius_raw_value{disk=\"/dev/sda\",smart_id=\"194\"} 36.6
smartmon_current_pending_sector_raw_value{disk=\"/dev/sda\"} 2
smartmon_some_vendor_thing_raw_value{disk=\"/dev/sda\"} 9
node_load1 0.5
smartmon_power_on_hours_raw_value{disk=\"/dev/sda\",smart_id=\"9\",} 100 1717171717000
";
    let h = parse_textfile(text).expect("parses");
    assert_eq!(h.smart[&5], 1500);
    assert_eq!(h.smart[&194], 37);
    assert_eq!(h.temperature_c, Some(36.6));
    assert_eq!(h.smart[&197], 2, "by name");
    assert_eq!(h.power_on_hours, Some(100));
    assert_eq!(h.smart.len(), 4, "unknown names are skipped");

    // smartmon.py's layout.
    let py = "\
smartmon_attr_raw_value{disk=\"/dev/sda\",name=\"reallocated_sector_ct\"} 3
smartmon_attr_value{disk=\"/dev/sda\",name=\"reallocated_sector_ct\"} 100
smartmon_device_smart_healthy{disk=\"/dev/sda\"} 1
";
    let h = parse_textfile(py).expect("parses");
    assert_eq!(h.smart, BTreeMap::from([(5, 3)]));
    assert_eq!(h.smart_passed, Some(true));

    // smartmon.sh's SCSI path mislabels the grown defect list as smart_id 12.
    let scsi = "\
smartmon_grown_defects_count_raw_value{disk=\"/dev/sdd\",type=\"scsi\",smart_id=\"12\"} 7.000000e+00
smartmon_power_cycle_count_raw_value{disk=\"/dev/sdd\",type=\"scsi\",smart_id=\"12\"} 4.000000e+01
";
    let h = parse_textfile(scsi).expect("parses");
    assert_eq!(h.smart, BTreeMap::from([(5, 7), (12, 40)]));
}

#[test]
fn textfile_disks_behind_a_raid_card_differ_by_type() {
    let text = "\
smartmon_reallocated_sector_ct_raw_value{disk=\"/dev/bus/0\",type=\"sat+megaraid,0\",smart_id=\"5\"} 1
smartmon_reallocated_sector_ct_raw_value{disk=\"/dev/bus/0\",type=\"sat+megaraid,1\",smart_id=\"5\"} 99
smartmon_current_pending_sector_raw_value{disk=\"/dev/bus/0\",type=\"sat+megaraid,1\",smart_id=\"197\"} 99
";
    let h = parse_textfile(text).expect("parses");
    assert_eq!(h.smart, BTreeMap::from([(5, 1)]));
}

#[test]
fn textfile_without_data_is_an_error() {
    let standby = "\
smartmon_smartctl_run{disk=\"/dev/sda\",type=\"sat\"} 1717171717
smartmon_device_active{disk=\"/dev/sda\",type=\"sat\"} 0
";
    let e = parse_textfile(standby).expect_err("standby");
    assert!(e.msg.contains("/dev/sda was in standby"), "{e}");
    let e = parse_textfile("# nothing\n\n").expect_err("empty");
    assert!(e.msg.contains("no SMART data"), "{e}");
}

#[test]
fn malformed_textfile_lines_report_their_line() {
    let head = "# HELP smartmon_x SMART metric x\n# TYPE smartmon_x gauge\n\n";
    let cases = [
        (
            "smartmon_reallocated_sector_ct_raw_value{disk=\"/dev/sda\"}",
            "no value",
        ),
        (
            "smartmon_reallocated_sector_ct_raw_value{disk=\"/dev/sda\"} 12abc",
            "not a number",
        ),
        (
            "smartmon_reallocated_sector_ct_raw_value 1 2 3",
            "after the value",
        ),
        (
            "smartmon_reallocated_sector_ct_raw_value 1 soon",
            "timestamp",
        ),
        (
            "smartmon_x{disk=\"/dev/sda\",type=\"sat\" 1",
            "expected ',' or '}'",
        ),
        ("smartmon_x{disk=\"/dev/sda\",", "unterminated label set"),
        (
            "smartmon_x{disk=\"/dev/sda",
            "unterminated value of label disk",
        ),
        ("smartmon_x{disk=\"/dev/sda\\\"} 1", "unterminated value"),
        ("smartmon_x{disk=\"a\\tb\"} 1", "bad escape"),
        ("smartmon_x{disk \"a\"} 1", "expected '='"),
        ("smartmon_x{disk=a} 1", "not quoted"),
        ("smartmon_x{=\"a\"} 1", "bad label name"),
        ("{disk=\"a\"} 1", "no metric name"),
        ("smartmon_x-y 1", "after the metric name"),
        (
            "smartmon_reallocated_sector_ct_raw_value{smart_id=\"five\"} 1",
            "smart_id",
        ),
        (
            "smartmon_reallocated_sector_ct_raw_value{smart_id=\"5\"} -1",
            "not a count",
        ),
        (
            "smartmon_reallocated_sector_ct_raw_value{smart_id=\"5\"} NaN",
            "not a count",
        ),
    ];
    for (bad, want) in cases {
        let text = format!(
            "{head}smartmon_device_smart_healthy{{disk=\"/dev/sda\"}} 1\n{bad}\nsmartmon_x 1\n"
        );
        let e = parse_textfile(&text).expect_err(bad);
        assert_eq!(e.line, Some(5), "{bad}: {e}");
        assert!(e.msg.contains(want), "{bad}: {e}");
    }
    // Lines about other disks must still be well-formed: a torn file is not half-read.
    let text = "smartmon_x{disk=\"/dev/sda\"} 1\nsmartmon_x{disk=\"/dev/sdb\"} \n";
    assert_eq!(parse_textfile(text).expect_err("torn").line, Some(2));
}

#[test]
fn sysfs_stat_field_counts() {
    let s11 = "  123 4 5678 90 11 12 1314 15 0 99 105\n";
    let d = parse_sysfs_stat(s11).expect("11 fields");
    assert_eq!(d.read_ios, 123);
    assert_eq!(d.read_sectors, 5678);
    assert_eq!(d.write_ticks_ms, 15);
    assert_eq!(d.time_in_queue_ms, 105);
    assert_eq!(d.discard_ios, None);
    assert_eq!(d.flush_ios, None);
    let d = parse_sysfs_stat(&format!("{} 1 2 3 4", s11.trim())).expect("15 fields");
    assert_eq!(
        (d.discard_ios, d.discard_ticks_ms, d.flush_ios),
        (Some(1), Some(4), None)
    );
    let d = parse_sysfs_stat(&format!("{} 1 2 3 4 5 6", s11.trim())).expect("17 fields");
    assert_eq!((d.flush_ios, d.flush_ticks_ms), (Some(5), Some(6)));
    for bad in ["1 2 3 4 5 6 7 8 9 10", "1 2 3 4 5 6 7 8 9 10 11 12", ""] {
        let e = parse_sysfs_stat(bad).expect_err(bad);
        assert!(e.msg.contains("expected 11, 15 or 17"), "{e}");
    }
    let e = parse_sysfs_stat("1 2 x 4 5 6 7 8 9 10 11").expect_err("not a number");
    assert!(e.msg.contains("field 3 (read sectors)"), "{e}");
    let e = parse_sysfs_stat("1 2 3 4 5 6 7 8 -1 10 11").expect_err("negative");
    assert!(e.msg.contains("in_flight"), "{e}");
}

#[test]
fn latency_from_two_snapshots() {
    let prev = DiskStats {
        read_ios: 1000,
        read_ticks_ms: 5000,
        write_ios: 200,
        write_ticks_ms: 800,
        ..DiskStats::default()
    };
    let now = DiskStats {
        read_ios: 1100,
        read_ticks_ms: 5450,
        write_ios: 200,
        write_ticks_ms: 800,
        ..DiskStats::default()
    };
    assert_eq!(latency(&prev, &now), (Some(4.5), None));
    // Counters reset (device re-added): no number rather than a wrong one.
    assert_eq!(latency(&now, &prev), (None, None));
    let reset_ticks = DiskStats {
        read_ios: 1200,
        read_ticks_ms: 10,
        ..now.clone()
    };
    assert_eq!(latency(&now, &reset_ticks).0, None);
}

/// A sysfs tree shaped like the kernel's: /sys/dev/block/MAJ:MIN are relative symlinks into
/// /sys/devices, partitions are subdirectories of their disk with a `partition` file.
fn fake_sys() -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    let r = t.path();
    let sda = "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda";
    let nvme = "devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1";
    let loop3 = "devices/virtual/block/loop3";
    for d in [sda, nvme, loop3] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    for (d, part) in [(sda, "sda1"), (nvme, "nvme0n1p2")] {
        std::fs::create_dir_all(r.join(d).join(part)).expect("mkdir");
        std::fs::write(r.join(d).join(part).join("partition"), "1\n").expect("write");
    }
    std::fs::create_dir_all(r.join("dev/block")).expect("mkdir");
    for (num, target) in [
        ("8:0", sda.to_string()),
        ("8:1", format!("{sda}/sda1")),
        ("259:2", format!("{nvme}/nvme0n1p2")),
        ("7:3", loop3.to_string()),
    ] {
        std::os::unix::fs::symlink(format!("../../{target}"), r.join("dev/block").join(num))
            .expect("symlink");
    }
    t
}

#[test]
fn discovery_through_a_fake_sysfs() {
    let sys = fake_sys();
    let dev = |maj, min| block_device_by_number(maj, min, sys.path()).expect("no io error");
    let bd = |name: &str, part: Option<&str>, major, minor| BlockDev {
        name: name.into(),
        partition: part.map(String::from),
        major,
        minor,
    };
    assert_eq!(dev(8, 0), Some(bd("sda", None, 8, 0)));
    assert_eq!(dev(8, 1), Some(bd("sda", Some("sda1"), 8, 1)));
    assert_eq!(dev(259, 2), Some(bd("nvme0n1", Some("nvme0n1p2"), 259, 2)));
    assert_eq!(dev(7, 3), Some(bd("loop3", None, 7, 3)));
    assert_eq!(dev(8, 99), None, "not in sysfs");
    assert_eq!(
        dev(0, 45),
        None,
        "anonymous device (tmpfs, overlayfs, btrfs)"
    );
}

#[test]
fn discovery_of_a_path_stats_it() {
    let sys = fake_sys();
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = std::fs::metadata(dir.path()).expect("stat").dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let disk = "devices/virtual/block/fakedisk";
    std::fs::create_dir_all(sys.path().join(disk)).expect("mkdir");
    let link = sys.path().join(format!("dev/block/{major}:{minor}"));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("../../{disk}"), link).expect("symlink");
    let found = block_device_of_in(dir.path(), sys.path()).expect("no io error");
    if major == 0 {
        assert_eq!(found, None, "the test directory is on an anonymous device");
    } else {
        assert_eq!(found.map(|d| d.name), Some("fakedisk".to_string()));
    }
    assert!(block_device_of_in(&dir.path().join("missing"), sys.path()).is_err());
    // The real /sys: whatever "/" is on, asking must not fail.
    assert!(block_device_of(Path::new("/")).is_ok());
}

#[test]
fn which_devices_have_smart() {
    let dev = |name: &str| BlockDev {
        name: name.into(),
        partition: None,
        major: 1,
        minor: 0,
    };
    for yes in ["sda", "sdab", "nvme0n1", "nvme1n2", "hda"] {
        assert!(has_smart(&dev(yes)), "{yes}");
    }
    for no in [
        "loop3", "ram0", "zram0", "dm-0", "md0", "md127", "nbd0", "sr0", "vda", "xvda", "mmcblk0",
        "pmem0", "rbd0",
    ] {
        assert!(!has_smart(&dev(no)), "{no}");
    }
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script);
    c
}

#[test]
fn running_a_command_parses_its_output() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/smart/ata-hdd.json");
    // smartctl exits non-zero on failing disks; the status in the document is what counts.
    let h = run_json_command(
        sh(&format!("cat '{fixture}'; exit 64")),
        Duration::from_secs(20),
        1 << 20,
    )
    .expect("parses");
    assert_eq!(h.smart[&194], 37);
    let e = run_json_command(sh("exit 3"), Duration::from_secs(20), 1 << 20).expect_err("empty");
    assert!(e.contains("no output"), "{e}");
    let e = run_json_command(
        sh(&format!("cat '{fixture}'")),
        Duration::from_secs(20),
        1000,
    )
    .expect_err("over the cap");
    assert!(e.contains("over 1000 bytes"), "{e}");
    let e = run_json_command(
        Command::new("/nonexistent/smartctl"),
        Duration::from_secs(1),
        1000,
    )
    .expect_err("missing");
    assert_eq!(e, "smartctl not installed");
}

#[test]
fn a_hung_command_is_killed_at_the_timeout() {
    let t0 = Instant::now();
    let e = run_json_command(sh("exec sleep 30"), Duration::from_millis(200), 1000)
        .expect_err("timeout");
    assert!(e.contains("within 200 ms"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    // An endless writer past the cap ends by EPIPE, not by the timeout.
    let t0 = Instant::now();
    let e = run_json_command(sh("exec yes"), Duration::from_secs(30), 1000).expect_err("cap");
    assert!(e.contains("over 1000 bytes"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[test]
fn run_smartctl_on_a_missing_device_is_an_error() {
    // Holds with and without smartctl installed.
    let dev = BlockDev {
        name: "foreshard-no-such-disk".into(),
        partition: None,
        major: 8,
        minor: 0,
    };
    let e = run_smartctl(&dev, Duration::from_secs(20)).expect_err("no device");
    assert!(
        e.starts_with("smartctl /dev/foreshard-no-such-disk: "),
        "{e}"
    );
}

#[test]
fn health_files_json_first_and_errors_named() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    assert!(read_health_file(d, 3).is_none());
    std::fs::write(d.join("3.prom"), FAILING_PROM).expect("write");
    let h = read_health_file(d, 3).expect("found").expect("parses");
    assert_eq!(h.source, "file 3.prom (/dev/sdc)");
    assert_eq!(h.smart[&5], 1832);
    std::fs::write(d.join("3.json"), ATA_HDD).expect("write");
    let h = read_health_file(d, 3).expect("found").expect("parses");
    assert_eq!(h.source, "file 3.json (/dev/sda)");
    assert_eq!(h.smart[&5], 0);

    // A broken JSON file is an error, not a fallback to the textfile.
    std::fs::write(d.join("4.json"), "{\n\"smartctl\": \n").expect("write");
    std::fs::write(d.join("4.prom"), FAILING_PROM).expect("write");
    let e = read_health_file(d, 4).expect("found").expect_err("broken");
    assert_eq!((e.file.as_str(), e.line), ("4.json", Some(3)));
    assert!(e.to_string().starts_with("4.json:3: not JSON"), "{e}");

    std::fs::write(d.join("5.prom"), "# x\nsmartmon_x{disk=\"/dev/sda\"}\n").expect("write");
    let e = read_health_file(d, 5)
        .expect("found")
        .expect_err("malformed");
    assert_eq!(e.to_string(), "5.prom:2: no value");

    std::fs::create_dir(d.join("6.json")).expect("mkdir");
    let e = read_health_file(d, 6)
        .expect("found")
        .expect_err("a directory");
    assert_eq!((e.file.as_str(), e.line), ("6.json", None));

    std::fs::write(d.join("7.json"), SMARTCTL_ERROR).expect("write");
    let e = read_health_file(d, 7)
        .expect("found")
        .expect_err("smartctl error");
    assert!(
        e.to_string().starts_with("7.json: smartctl exit status 2"),
        "{e}"
    );
}

#[test]
fn health_round_trips_through_serde() {
    for text in [ATA_HDD, NVME] {
        let h = parse_smartctl_json(text).expect("parses");
        let back: Health =
            serde_json::from_str(&serde_json::to_string(&h).expect("serializes")).expect("reads");
        assert_eq!(back, h);
    }
}
