//! The shim's line splitter on arbitrary output cut into arbitrary chunks.
//!
//! Checks: the lines rebuilt from the pieces are the input split at `\n`
//! with one `\r` before each `\n` removed (the documented line-end rule);
//! no piece is longer than the maximum and every piece but a line's last
//! has exactly the maximum; `part` counts 0, 1, 2... within a line and
//! `more_parts` is set on all but its last piece; how the output is cut
//! into chunks changes nothing.
#![no_main]

use agent_shim::splitter::{LineSplitter, Piece};
use libfuzzer_sys::fuzz_target;

fn split(max: usize, chunks: &[&[u8]]) -> Vec<Piece> {
    let mut splitter = LineSplitter::new(max);
    let mut out = Vec::new();
    for chunk in chunks {
        splitter.push(chunk, &mut out);
    }
    splitter.finish(&mut out);
    out
}

/// The lines the documented rule makes of `input`.
fn expected_lines(input: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut rest = input;
    while let Some(at) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..at];
        lines.push(line.strip_suffix(b"\r").unwrap_or(line));
        rest = &rest[at + 1..];
    }
    if !rest.is_empty() {
        lines.push(rest);
    }
    lines
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let Some((&cut, input)) = rest.split_first() else {
        return;
    };
    let max = usize::from(head % 16) + 1;
    let step = usize::from(cut % 7) + 1;

    let whole = split(max, &[input]);
    let chunks: Vec<&[u8]> = input.chunks(step).collect();
    let chunked = split(max, &chunks);
    assert_eq!(whole, chunked, "chunking changed the pieces");

    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut open = false;
    let mut next_part = 0u32;
    for piece in &whole {
        assert!(piece.data.len() <= max, "piece longer than the maximum");
        assert_eq!(piece.part, next_part, "part numbering skipped");
        if piece.more_parts {
            assert_eq!(piece.data.len(), max, "a non-final piece is short");
        }
        if open {
            lines
                .last_mut()
                .expect("open line")
                .extend_from_slice(&piece.data);
        } else {
            lines.push(piece.data.to_vec());
        }
        open = piece.more_parts;
        next_part = if piece.more_parts { piece.part + 1 } else { 0 };
    }
    assert!(!open, "the last piece says more parts follow");
    let expected: Vec<Vec<u8>> = expected_lines(input)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(lines, expected, "pieces do not rebuild the lines");
});
