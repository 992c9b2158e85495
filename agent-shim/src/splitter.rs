//! Turns a byte stream into lines: pure, no I/O, no clock.
//!
//! Rules (they are the protocol's, see `Line` in `proto/logdrain.proto`):
//! * `\n` ends a line; one `\r` right before it is stripped. A `\r` anywhere
//!   else is data.
//! * Bytes are kept as they are: invalid UTF-8 and NUL bytes never cost a line.
//! * Empty lines are lines.
//! * A line longer than the maximum is cut into pieces of exactly the
//!   maximum (the last piece holds the rest); pieces carry `part` (0-based)
//!   and `more_parts` (true on all but the last). Nothing is dropped.
//! * [`LineSplitter::finish`] flushes an unterminated last line at EOF.
//!
//! It must not timestamp, buffer beyond one line, or know about streams.

use bytes::{Buf, Bytes, BytesMut};

/// One line, or one piece of a line longer than the maximum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The bytes, without the terminator.
    pub data: Bytes,
    /// 0-based index of this piece within its line.
    pub part: u32,
    /// True on every piece of a split line except the last.
    pub more_parts: bool,
}

/// Capacity of the allocations that the pending bytes (and so the pieces
/// cut from them) live in: the pieces of the lines read together share one,
/// instead of one allocation (and its bookkeeping) per line.
pub const PENDING_ALLOCATION_BYTES: usize = 64 * 1024;

/// Splits one output stream into [`Piece`]s.
#[derive(Debug)]
pub struct LineSplitter {
    max_line_bytes: usize,
    /// Bytes of the current line not yet emitted (may end with a `\r`
    /// that turns out to be the terminator's). Pieces are split off its
    /// front; once its allocation is used up, the next one has the same
    /// capacity ([`PENDING_ALLOCATION_BYTES`], as `BytesMut` remembers it).
    pending: BytesMut,
    /// Index of the next piece of the current line.
    part: u32,
}

impl LineSplitter {
    /// A splitter cutting lines longer than `max_line_bytes` (at least 1).
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            max_line_bytes: max_line_bytes.max(1),
            pending: BytesMut::with_capacity(PENDING_ALLOCATION_BYTES),
            part: 0,
        }
    }

    /// Feeds a chunk of output; appends every piece it completes to `out`.
    ///
    /// The chunk is appended to the pending bytes in one copy, and lines
    /// are split off their front as newlines are found.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Piece>) {
        // The pending bytes before the chunk are the current line's, and
        // hold no newline.
        let mut searched = self.pending.len();
        self.pending.extend_from_slice(chunk);
        while let Some(at) = memchr::memchr(b'\n', &self.pending[searched..]) {
            self.emit_line(searched + at, out);
            searched = 0;
        }
        self.cut_overlong(out);
    }

    /// Emits the current line, which ends with the newline at `newline` in
    /// the pending bytes (one `\r` before it is the terminator's), and
    /// removes it and its terminator from them.
    fn emit_line(&mut self, newline: usize, out: &mut Vec<Piece>) {
        let mut len = newline;
        if len > 0 && self.pending[len - 1] == b'\r' {
            len -= 1;
        }
        let terminator = newline + 1 - len;
        while len > self.max_line_bytes {
            self.cut(out);
            len -= self.max_line_bytes;
        }
        let data = self.pending.split_to(len).freeze();
        out.push(Piece {
            data,
            part: self.part,
            more_parts: false,
        });
        self.part = 0;
        self.pending.advance(terminator);
    }

    /// At EOF: appends the rest of an unterminated last line, if there is
    /// one. A trailing `\r` stays, since no `\n` followed it; it is data,
    /// so it may need a piece of its own (at most two pieces are appended).
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        if self.pending.is_empty() && self.part == 0 {
            return;
        }
        while self.pending.len() > self.max_line_bytes {
            self.cut(out);
        }
        self.emit_last(out);
    }

    /// Emits full-size pieces while the pending bytes are certainly longer
    /// than the maximum. A single extra `\r` is held back: if `\n` follows,
    /// it is the terminator and the line was exactly the maximum.
    fn cut_overlong(&mut self, out: &mut Vec<Piece>) {
        let max = self.max_line_bytes;
        while self.pending.len() > max
            && (self.pending.len() > max + 1 || self.pending[max] != b'\r')
        {
            self.cut(out);
        }
    }

    /// Emits the first maximum-size piece of the pending bytes.
    fn cut(&mut self, out: &mut Vec<Piece>) {
        let data = self.pending.split_to(self.max_line_bytes).freeze();
        out.push(Piece {
            data,
            part: self.part,
            more_parts: true,
        });
        self.part = self.part.saturating_add(1);
    }

    fn emit_last(&mut self, out: &mut Vec<Piece>) {
        let data = self.pending.split().freeze();
        out.push(Piece {
            data,
            part: self.part,
            more_parts: false,
        });
        self.part = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(max: usize, chunks: &[&[u8]]) -> Vec<Piece> {
        let mut splitter = LineSplitter::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, &mut out);
        }
        splitter.finish(&mut out);
        out
    }

    fn whole(data: &[u8]) -> Piece {
        Piece {
            data: Bytes::copy_from_slice(data),
            part: 0,
            more_parts: false,
        }
    }

    fn datas(pieces: &[Piece]) -> Vec<&[u8]> {
        pieces.iter().map(|p| &p.data[..]).collect()
    }

    #[test]
    fn pieces_of_lines_read_together_share_one_allocation() {
        let mut splitter = LineSplitter::new(100);
        let mut out = Vec::new();
        splitter.push(b"first\nsecond\nthird\n", &mut out);
        splitter.push(b"fourth\n", &mut out);
        assert_eq!(out.len(), 4);
        let start = out[0].data.as_ptr() as usize;
        for piece in &out {
            let offset = (piece.data.as_ptr() as usize).wrapping_sub(start);
            assert!(
                offset + piece.data.len() <= 26,
                "{piece:?} is not in the allocation of the first"
            );
        }
    }

    /// The lines the documented rule makes of `input` (as the fuzz target
    /// states it), rebuilt from pieces.
    fn rule_lines(input: &[u8]) -> Vec<Vec<u8>> {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut rest = input;
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..at];
            lines.push(line.strip_suffix(b"\r").unwrap_or(line).to_vec());
            rest = &rest[at + 1..];
        }
        if !rest.is_empty() {
            lines.push(rest.to_vec());
        }
        lines
    }

    #[test]
    fn any_cut_into_chunks_gives_the_pieces_of_the_whole() {
        // A fixed pseudo-random sequence: output rich in `\r`, `\n` and
        // lines around the maximum, cut at random places.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        for _ in 0..500 {
            let max = 1 + next(8);
            let input: Vec<u8> = (0..next(80))
                .map(|_| [b'a', b'b', b'\r', b'\n', b'\n'][next(5)])
                .collect();
            let whole = split_all(max, &[&input]);
            let mut chunks = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(1 + next(rest.len()));
                chunks.push(chunk);
                rest = tail;
            }
            assert_eq!(split_all(max, &chunks), whole, "{input:?} in {chunks:?}");
            let mut lines: Vec<Vec<u8>> = Vec::new();
            for piece in &whole {
                assert!(piece.data.len() <= max);
                if piece.part == 0 {
                    lines.push(Vec::new());
                }
                if let Some(line) = lines.last_mut() {
                    line.extend_from_slice(&piece.data);
                }
            }
            assert_eq!(lines, rule_lines(&input), "{input:?}");
        }
    }

    #[test]
    fn newline_ends_a_line_and_crlf_loses_its_cr() {
        let out = split_all(100, &[b"one\ntwo\r\nthree\n"]);
        assert_eq!(out, vec![whole(b"one"), whole(b"two"), whole(b"three")]);
    }

    #[test]
    fn cr_in_the_middle_of_a_line_is_data() {
        let out = split_all(100, &[b"progress 10%\rprogress 20%\r\n"]);
        assert_eq!(out, vec![whole(b"progress 10%\rprogress 20%")]);
    }

    #[test]
    fn only_one_cr_before_newline_is_stripped() {
        let out = split_all(100, &[b"a\r\r\n"]);
        assert_eq!(out, vec![whole(b"a\r")]);
    }

    #[test]
    fn unterminated_last_line_is_flushed_at_eof() {
        let out = split_all(100, &[b"first\nlast without newline"]);
        assert_eq!(out, vec![whole(b"first"), whole(b"last without newline")]);
    }

    #[test]
    fn trailing_cr_without_newline_is_kept_at_eof() {
        let out = split_all(100, &[b"spinner\r"]);
        assert_eq!(out, vec![whole(b"spinner\r")]);
    }

    #[test]
    fn nothing_after_the_last_newline_means_no_extra_line() {
        let out = split_all(100, &[b"a\n"]);
        assert_eq!(out, vec![whole(b"a")]);
        assert!(split_all(100, &[b""]).is_empty());
    }

    #[test]
    fn empty_lines_are_preserved() {
        let out = split_all(100, &[b"\n\r\n\nx\n"]);
        assert_eq!(datas(&out), vec![&b""[..], b"", b"", b"x"]);
    }

    #[test]
    fn invalid_utf8_and_nul_bytes_are_preserved() {
        let out = split_all(100, &[b"\xff\xfe bad \xc3\x28\n\0mid\0\n"]);
        assert_eq!(
            out,
            vec![whole(b"\xff\xfe bad \xc3\x28"), whole(b"\0mid\0")]
        );
    }

    #[test]
    fn lines_spanning_chunks_are_joined() {
        let out = split_all(100, &[b"hel", b"lo\r", b"\nwor", b"ld"]);
        assert_eq!(out, vec![whole(b"hello"), whole(b"world")]);
    }

    #[test]
    fn long_line_is_split_into_marked_pieces() {
        let out = split_all(4, &[b"abcdefghij\nk\n"]);
        let expected = vec![
            Piece {
                data: Bytes::from_static(b"abcd"),
                part: 0,
                more_parts: true,
            },
            Piece {
                data: Bytes::from_static(b"efgh"),
                part: 1,
                more_parts: true,
            },
            Piece {
                data: Bytes::from_static(b"ij"),
                part: 2,
                more_parts: false,
            },
            whole(b"k"),
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn long_line_fed_byte_by_byte_splits_the_same_way() {
        let input = b"abcdefghij\r\nk\n";
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(split_all(4, &chunks), split_all(4, &[input]));
    }

    #[test]
    fn line_of_exactly_the_maximum_is_not_split() {
        assert_eq!(split_all(4, &[b"abcd\n"]), vec![whole(b"abcd")]);
        assert_eq!(split_all(4, &[b"abcd\r\n"]), vec![whole(b"abcd")]);
        assert_eq!(split_all(4, &[b"abcd"]), vec![whole(b"abcd")]);
        let by_byte: Vec<&[u8]> = b"abcd\r\n".chunks(1).collect();
        assert_eq!(split_all(4, &by_byte), vec![whole(b"abcd")]);
    }

    #[test]
    fn cr_beyond_the_maximum_that_is_not_a_terminator_is_kept() {
        let out = split_all(4, &[b"abcd\rx\n"]);
        assert_eq!(datas(&out), vec![&b"abcd"[..], b"\rx"]);
        assert!(out[0].more_parts && !out[1].more_parts);
    }

    #[test]
    fn unterminated_long_line_is_split_and_flushed() {
        let out = split_all(3, &[b"abcdefg"]);
        assert_eq!(datas(&out), vec![&b"abc"[..], b"def", b"g"]);
        assert_eq!(
            out.iter()
                .map(|p| (p.part, p.more_parts))
                .collect::<Vec<_>>(),
            vec![(0, true), (1, true), (2, false)]
        );
    }

    /// Found for the `splitter` fuzz target's invariant: a line of the maximum
    /// plus a `\r` at EOF came out as one piece over the maximum.
    #[test]
    fn trailing_cr_at_eof_after_a_full_line_gets_its_own_piece() {
        let out = split_all(4, &[b"abcd\r"]);
        assert_eq!(datas(&out), vec![&b"abcd"[..], b"\r"]);
        assert_eq!(
            out.iter()
                .map(|p| (p.part, p.more_parts))
                .collect::<Vec<_>>(),
            vec![(0, true), (1, false)]
        );
    }

    #[test]
    fn pieces_rejoin_to_the_original_line() {
        let line: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let line: Vec<u8> = line.into_iter().filter(|&b| b != b'\n').collect();
        let mut input = line.clone();
        input.push(b'\n');
        let out = split_all(64, &[&input]);
        let joined: Vec<u8> = out.iter().flat_map(|p| p.data.iter().copied()).collect();
        assert_eq!(joined, line);
        for (i, piece) in out.iter().enumerate() {
            assert_eq!(piece.part as usize, i);
            assert_eq!(piece.more_parts, i + 1 < out.len());
            assert!(piece.data.len() <= 64);
        }
    }
}
