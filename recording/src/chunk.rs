//! A chunk: events as JSON lines, each ending in `\n`, gzip-compressed.

use std::io::{Read as _, Write as _};

use flate2::{Compression, read::GzDecoder, write::GzEncoder};

/// The most a chunk may decompress to: a chunk is cut at a few MiB, so
/// anything near this is not a chunk the proxy wrote.
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// Compresses `lines` (each without its newline) into a chunk.
pub fn encode<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    for line in lines {
        gz.write_all(line)?;
        gz.write_all(b"\n")?;
    }
    gz.finish()
}

/// Compresses JSON lines text (each line ending in `\n`) as it is.
pub fn encode_text(text: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(text)?;
    gz.finish()
}

/// The lines of a chunk, without their newlines.
pub fn decode(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut text = Vec::new();
    GzDecoder::new(bytes)
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("not a gzip chunk: {e}"))?;
    if text.len() as u64 > MAX_DECOMPRESSED {
        return Err(format!("decompresses to more than {MAX_DECOMPRESSED} bytes"));
    }
    let Some(body) = text.strip_suffix(b"\n") else {
        return Err("the last line has no newline: the chunk is cut short".into());
    };
    Ok(body.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let lines: [&[u8]; 2] = [b"{\"a\":1}", b"{\"b\":2}"];
        let bytes = encode(lines).unwrap();
        assert_eq!(decode(&bytes).unwrap(), lines.map(<[u8]>::to_vec));
        assert_eq!(
            decode(&encode_text(b"x\ny\n").unwrap()).unwrap(),
            [b"x".to_vec(), b"y".to_vec()]
        );
    }

    #[test]
    fn bad_chunks_are_errors() {
        assert!(decode(b"plain text").unwrap_err().contains("not a gzip chunk"));
        let cut = encode_text(b"x\ny").unwrap();
        assert!(decode(&cut).unwrap_err().contains("cut short"));
    }
}
