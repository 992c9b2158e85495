//! Level detection on arbitrary lines.
//!
//! Checks: it never panics; on a line that is not a JSON object (which is
//! parsed whole up to its own limit), the result depends only on the first
//! `TEXT_PREFIX_BYTES` bytes (after a byte order mark): anything appended after them changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logdrain::v1::StreamKind;
use logdrain_gateway::sinks::level::{detect, TEXT_PREFIX_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, line)) = data.split_first() else {
        return;
    };
    let stream = if flags & 1 == 0 {
        StreamKind::Stdout
    } else {
        StreamKind::Stderr
    };
    let level = detect(line, stream);

    // A UTF-8 byte order mark is skipped before the window starts.
    let start = if line.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    let looks_json = line[start..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if looks_json || line.len() < start + TEXT_PREFIX_BYTES {
        return;
    }
    let mut padded = line[..start + TEXT_PREFIX_BYTES].to_vec();
    padded.extend_from_slice(b" ERROR level=fatal \x1b[31m {\"level\":\"debug\"}");
    assert_eq!(
        detect(&padded, stream),
        level,
        "bytes beyond the scan window changed the level"
    );
});
