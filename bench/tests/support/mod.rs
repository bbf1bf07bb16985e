//! Helpers shared by the end-to-end tests of `echo-bench`.
#![allow(dead_code)] // each test file uses a different subset

use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;

/// Runs echo-bench against `addr` for 0.5 s with --json; returns the exit
/// code and the parsed JSON line.
pub fn bench(addr: SocketAddr, args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_echo-bench"))
        .args(args)
        .args(["--addr", &addr.to_string(), "--duration", "0.5", "--json"])
        .output()
        .expect("run echo-bench");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one JSON line expected, got {stdout:?} (stderr {stderr})"
    );
    let json: Value = serde_json::from_str(lines[0]).expect("valid JSON");
    let code = out.status.code().expect("exit code");
    (code, json)
}

pub fn num(json: &Value, key: &str) -> u64 {
    json[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {json}"))
}
