//! The logger: one line per record on stderr, as plain text or as JSON.

use std::io::Write as _;

/// `--log-format`: how each log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum LogFormat {
    /// Plain lines: messages at info level as they are, others prefixed
    /// with their level.
    Text,
    /// One JSON object per line (time, level, message, and the record's
    /// fields such as `peer`), for log shippers.
    Json,
}

/// Writes each record as one whole line on stderr, so lines from
/// connection threads never interleave.
#[derive(Debug)]
struct Logger {
    format: LogFormat,
}

/// Makes the logger the `log` crate's, at `level`.
pub(super) fn install(level: log::LevelFilter, format: LogFormat) {
    static TEXT: Logger = Logger {
        format: LogFormat::Text,
    };
    static JSON: Logger = Logger {
        format: LogFormat::Json,
    };
    let logger = match format {
        LogFormat::Text => &TEXT,
        LogFormat::Json => &JSON,
    };
    // Fails only if a logger is already set (tests calling `run` twice).
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// One JSON object per line, for log shippers: time (UTC, RFC 3339), level,
/// message.
fn json_line(
    level: log::Level,
    message: &str,
    fields: &[(String, String)],
    now: std::time::SystemTime,
) -> String {
    let mut line = format!(
        "{{\"time\":\"{}\",\"level\":\"{}\",\"message\":\"{}\"",
        rfc3339_millis(now),
        level.as_str().to_lowercase(),
        json_escape(message)
    );
    for (key, value) in fields {
        line.push_str(&format!(
            ",\"{}\":\"{}\"",
            json_escape(key),
            json_escape(value)
        ));
    }
    line.push_str("}\n");
    line
}

/// `now` in UTC as RFC 3339 with milliseconds, `2025-12-01T22:10:00.123Z`.
///
/// Written here rather than taken from a crate: humantime's
/// `format_rfc3339_millis`, the small candidate, panics for a time before
/// 1970 and fails after 9999, and a logger must not panic because the
/// clock is set wrong; jiff and time are far larger than these lines. The
/// test checks every day of a 400-year cycle against a day-by-day calendar.
fn rfc3339_millis(now: std::time::SystemTime) -> String {
    // Before 1970 (a clock set wrong) is logged as the epoch.
    let ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let (days, ms_of_day) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

/// `text` as the inside of a JSON string (RFC 8259: `"`, `\\` and the
/// control characters escaped). Eight lines, checked against serde_json as
/// the reference parser; serde_json itself would bring serde to the binary
/// for these eight lines.
fn json_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            c if (c as u32) < 0x20 => escaped.push_str(&format!("\\u{:04x}", c as u32)),
            c => escaped.push(c),
        }
    }
    escaped
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = match record.level() {
            _ if self.format == LogFormat::Json => {
                /// Collects a record's fields (peer, bytes, reason) as text.
                struct Fields(Vec<(String, String)>);
                impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
                    fn visit_pair(
                        &mut self,
                        key: log::kv::Key<'kvs>,
                        value: log::kv::Value<'kvs>,
                    ) -> Result<(), log::kv::Error> {
                        self.0.push((key.to_string(), value.to_string()));
                        Ok(())
                    }
                }
                let mut fields = Fields(Vec::new());
                let _ = record.key_values().visit(&mut fields);
                json_line(
                    record.level(),
                    &record.args().to_string(),
                    &fields.0,
                    std::time::SystemTime::now(),
                )
            }
            log::Level::Info => format!("{}\n", record.args()),
            level => format!("{}: {}\n", level.as_str().to_lowercase(), record.args()),
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        /// Whatever the message and fields hold (quotes, backslashes,
        /// control characters, any Unicode), the line is one JSON object
        /// that serde_json, the reference parser, reads back to exactly
        /// those strings.
        #[test]
        fn json_lines_parse_back_to_what_was_logged(
            message in proptest::collection::vec(any::<char>(), 0..48),
            fields in proptest::collection::vec(
                (proptest::collection::vec(any::<char>(), 0..8),
                 proptest::collection::vec(any::<char>(), 0..16)),
                0..4,
            ),
        ) {
            let message: String = message.into_iter().collect();
            let fields: Vec<(String, String)> = fields
                .into_iter()
                .map(|(k, v)| (format!("k{}", k.into_iter().collect::<String>()), v.into_iter().collect()))
                .collect();
            let line = json_line(log::Level::Info, &message, &fields, std::time::SystemTime::now());
            prop_assert!(line.ends_with("}\n"), "{}", line);
            prop_assert_eq!(line.matches('\n').count(), 1, "one line: {}", line);
            let parsed: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
            prop_assert_eq!(parsed["message"].as_str(), Some(message.as_str()));
            prop_assert_eq!(parsed["level"].as_str(), Some("info"));
            for (key, _) in &fields {
                // A repeated key: the last one wins in serde_json.
                let last = fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
                prop_assert_eq!(parsed[key.as_str()].as_str(), last);
            }
        }
    }

    #[test]
    fn json_log_lines() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_764_627_000_123);
        assert_eq!(
            json_line(log::Level::Warn, "a \"quoted\" \\ line\n\x01", &[], t),
            "{\"time\":\"2025-12-01T22:10:00.123Z\",\"level\":\"warn\",\
             \"message\":\"a \\\"quoted\\\" \\\\ line\\n\\u0001\"}\n"
        );
        let leap = std::time::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(json_line(log::Level::Info, "x", &[], leap).contains("2000-02-29T00:00:00.000Z"));
        let fields = [
            ("peer".to_owned(), "127.0.0.1:5".to_owned()),
            ("bytes".to_owned(), "3".to_owned()),
        ];
        assert!(json_line(log::Level::Debug, "m", &fields, t)
            .ends_with(",\"peer\":\"127.0.0.1:5\",\"bytes\":\"3\"}\n"));
    }

    /// The timestamp of every day of a whole 400-year Gregorian cycle
    /// (1970-2369: leap years, 2100 which is not, 2000 which is), checked
    /// against a calendar that counts days one by one.
    #[test]
    fn json_time_matches_a_day_by_day_calendar() {
        let leap =
            |y: u64| y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
        let (mut year, mut month, mut day) = (1970u64, 1u64, 1u64);
        for days in 0..146_097u64 {
            // A different time of day each day, both ends of it included.
            let ms_of_day = match days % 3 {
                0 => 0,
                1 => 86_399_999,
                _ => days * 7_919_993 % 86_400_000,
            };
            let t = std::time::UNIX_EPOCH + Duration::from_millis(days * 86_400_000 + ms_of_day);
            let want = format!(
                "{{\"time\":\"{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z\"",
                ms_of_day / 3_600_000,
                ms_of_day / 60_000 % 60,
                ms_of_day / 1000 % 60,
                ms_of_day % 1000
            );
            let line = json_line(log::Level::Info, "", &[], t);
            assert!(line.starts_with(&want), "day {days}: {line} is not {want}");
            let month_len = match month {
                2 if leap(year) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > month_len {
                (day, month) = (1, month + 1);
                if month > 12 {
                    (month, year) = (1, year + 1);
                }
            }
        }
        // Before 1970 (a clock set wrong) is logged as the epoch.
        let before = std::time::UNIX_EPOCH - Duration::from_secs(1);
        assert!(json_line(log::Level::Info, "", &[], before).contains("1970-01-01T00:00:00.000Z"));
    }
}
