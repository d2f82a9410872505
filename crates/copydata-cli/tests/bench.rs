//! `copydata bench`, run for real on a few rows: the table, the JSON rows
//! and the SVG chart.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_copydata")).arg("bench").args(args).output().expect("running copydata bench")
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("copydata-benchtest-{}-{name}", std::process::id()))
}

/// One JSON row: (transport, mode, payload_bytes, senders, p50_ns).
type JsonRow = (String, Option<String>, u64, u64, Option<f64>);

fn rows(path: &PathBuf) -> Vec<JsonRow> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r.as_object().unwrap().len(), 8, "{r}");
            (
                r["transport"].as_str().unwrap().to_string(),
                r["mode"].as_str().map(str::to_string),
                r["payload_bytes"].as_u64().unwrap(),
                r["senders"].as_u64().unwrap(),
                r["p50_ns"].as_f64(),
            )
        })
        .collect()
}

#[test]
fn floors_give_a_table_json_and_svg() {
    let (json, svg) = (temp("floors.json"), temp("floors.svg"));
    let out =
        bench(&["--quick", "--filter", "floor", "--json", json.to_str().unwrap(), "--plot", svg.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("floor-spin-ping-pong"), "{stdout}");
    let rows = rows(&json);
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["floor-spin-ping-pong", "floor-memcpy", "floor-fill-and-sum"]);
    assert!(rows.iter().all(|r| r.1.is_none() && r.3 == 1 && r.4.is_some_and(|p| p > 0.0)), "{rows:?}");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    let _ = std::fs::remove_file(json);
    let _ = std::fs::remove_file(svg);
}

#[cfg(target_os = "linux")]
#[test]
fn copydata_rows_are_measured() {
    let json = temp("copydata.json");
    let out = bench(&["--quick", "--filter", "copydata", "--json", json.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = rows(&json);
    assert!(rows.len() >= 6, "{rows:?}");
    for r in &rows {
        assert_eq!(r.0, "copydata");
        assert!(r.1.is_some() && r.4.is_some(), "not measured: {r:?}\n{}", String::from_utf8_lossy(&out.stdout));
    }
    assert!(rows.iter().any(|r| r.3 == 16));
    let _ = std::fs::remove_file(json);
}

#[test]
fn bad_arguments_are_usage_errors() {
    let out = bench(&["--quick", "--filter", "no-such-row"]);
    assert_eq!(out.status.code(), Some(2));
    if !cfg!(feature = "peers") {
        let out = bench(&["--quick", "--peers"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("peers"));
    }
    let out = bench(&["--quick", "--json", "/no/such/dir/b.json"]);
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn locks_are_measured_next_to_std() {
    let out = bench(&["--locks", "--quick"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for row in [
        "uncontended lock+unlock: std::sync::Mutex",
        "uncontended lock+unlock: copydata Mutex",
        "uncontended lock+increment+unlock: copydata Shared<u64>",
        "hand-off: std::sync::Mutex, two threads",
        "hand-off: copydata Shared<u64>, two processes",
    ] {
        let line = text.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no row {row:?}: {text}"));
        assert!(line.contains(" ns ") && line.ends_with('x'), "{line}");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn pauses_are_measured_next_to_the_floor() {
    let out = bench(&["--pauses", "--quick"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for row in [
        "send 64 B, at once",
        "send 64 B, after 8 ms",
        "loan 64 KiB, at once",
        "loan 64 KiB, after 8 ms",
        "loan 64 MiB, after its filling",
        "spin floor round trip, at once",
        "spin floor round trip, after 8 ms",
        "spin floor round trip, after filling 64 KiB",
        "spin floor round trip, after filling 64 MiB",
        "read 32 KiB of own memory, at once",
        "read 32 KiB, after 8 ms",
    ] {
        let line = text.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no row {row:?}: {text}"));
        // Two figures: p50 and p99, each a number and a unit.
        let figures: Vec<&str> = line[row.len()..].split_whitespace().collect();
        assert_eq!(figures.len(), 4, "{line}");
        assert!(figures[0].parse::<f64>().is_ok() && figures[2].parse::<f64>().is_ok(), "{line}");
    }
}
