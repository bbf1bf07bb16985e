//! Command-line parsing. The input is split on NUL bytes into arguments.
//! Properties: parsing never panics, and whatever parses renders back to a
//! canonical command line that parses to the same options.
#![no_main]

use clap::Parser;
use echo_server::cli::Args;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let argv = std::iter::once("echo-server").chain(text.split('\0'));
    let Ok(args) = Args::try_parse_from(argv) else {
        return;
    };
    let mut canonical = vec![
        "echo-server".to_owned(),
        "--bind".to_owned(),
        args.bind.to_string(),
        "--max-connections".to_owned(),
        args.max_connections.to_string(),
    ];
    if let Some(t) = args.idle_timeout {
        canonical.push("--idle-timeout".to_owned());
        canonical.push(t.as_secs_f64().to_string());
    }
    if args.log_data {
        canonical.push("--log-data".to_owned());
    }
    canonical.push("--".to_owned());
    canonical.push(args.port.to_string());
    let again = Args::try_parse_from(&canonical).expect("canonical form parses");
    assert_eq!(again.port, args.port);
    assert_eq!(again.bind, args.bind);
    assert_eq!(again.max_connections, args.max_connections);
    assert_eq!(again.log_data, args.log_data);
    match (again.idle_timeout, args.idle_timeout) {
        (Some(a), Some(b)) => assert!(a.abs_diff(b).as_nanos() <= 1, "{a:?} vs {b:?}"),
        (a, b) => assert_eq!(a, b),
    }
});
