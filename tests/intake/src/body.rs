//! Request bodies, read and decompressed within a size bound, for every
//! vendor intake.
//!
//! A client cannot make an intake hold more than the bound in memory: the
//! body stops being read, and the decompressed stream stops being inflated,
//! one byte past it. This module must not interpret the bytes.

use std::io::Read;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use flate2::read::MultiGzDecoder;
use futures::StreamExt;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("body is over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("could not read the body: {0}")]
    Read(#[source] axum::Error),
    #[error("body is not valid gzip: {0}")]
    Gzip(#[source] std::io::Error),
}

/// Reads the whole body, failing once it is over `limit` bytes.
pub(crate) async fn read(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Decompresses a gzip body, failing once the output is over `limit` bytes.
pub(crate) fn gunzip(compressed: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    let bound = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    MultiGzDecoder::new(compressed)
        .take(bound)
        .read_to_end(&mut out)
        .map_err(BodyError::Gzip)?;
    if out.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::GzEncoder;
    use flate2::Compression;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gzip_within_the_limit_decompresses() {
        assert_eq!(gunzip(&gzip(b"hello"), 5).unwrap(), b"hello");
    }

    #[test]
    fn gzip_over_the_limit_stops_one_byte_past_it() {
        let err = gunzip(&gzip(&vec![b'a'; 10_000]), 100).unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 100 }), "{err}");
    }

    #[test]
    fn concatenated_gzip_members_are_one_body() {
        let mut body = gzip(b"[1,");
        body.extend(gzip(b"2]"));
        assert_eq!(gunzip(&body, 100).unwrap(), b"[1,2]");
    }

    #[test]
    fn bytes_that_are_not_gzip_are_an_error() {
        let err = gunzip(b"[{\"message\":\"plain\"}]", 100).unwrap_err();
        assert!(matches!(err, BodyError::Gzip(_)), "{err}");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        let err = read(Body::from(vec![0u8; 11]), 10).await.unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 10 }));
        assert_eq!(read(Body::from(vec![0u8; 10]), 10).await.unwrap().len(), 10);
    }
}
