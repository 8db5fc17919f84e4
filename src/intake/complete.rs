//! Whether an inline image is whole: its structure walked from the header to the format's
//! end marker, by the lengths it declares, without decoding a pixel. A file cut in transit
//! (a 64×64 PNG at half its length, a JPEG without the end of its scan) has a header that
//! reads fine; only its end shows the cut. One pass over the bytes, no allocation.
//! (GIF's walk is in `image.rs`, where it also counts frames.)

use super::image::ImageFormat;

/// `Ok` when `bytes`, already identified as `format`, reach their end marker whole.
/// The error is a sentence for a person, without a field prefix.
pub(super) fn check_complete(format: ImageFormat, bytes: &[u8]) -> Result<(), String> {
    match format {
        ImageFormat::Png => png(bytes),
        ImageFormat::Jpeg => jpeg(bytes),
        ImageFormat::Webp => webp(bytes),
        // Walked with the frame count (image.rs).
        ImageFormat::Gif => Ok(()),
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A chunk type for a message: its letters when it has them, else its bytes in hex.
fn fourcc(kind: &[u8]) -> String {
    if kind.iter().all(|c| c.is_ascii_alphanumeric() || *c == b' ') {
        String::from_utf8_lossy(kind).trim_end().to_string()
    } else {
        kind.iter().map(|c| format!("{c:02x}")).collect()
    }
}

/// PNG: chunks (length, type, data, CRC) from the signature to `IEND`, each inside the
/// file, with at least one `IDAT` before it. Bytes after `IEND` are ignored, as decoders do.
/// CRCs are not checked: a cut shows in the lengths, and a flipped bit is not a truncation.
fn png(b: &[u8]) -> Result<(), String> {
    let mut pos = 8;
    let mut has_data = false;
    loop {
        let (Some(len), Some(kind)) = (be32(b, pos), b.get(pos + 4..pos + 8)) else {
            return Err("the PNG is truncated (it ends before its IEND chunk)".to_string());
        };
        if len > i32::MAX as u32 {
            return Err(format!(
                "the PNG is corrupt (the chunk at byte {pos} claims {len} bytes)"
            ));
        }
        let end = pos + 12 + len as usize;
        if end > b.len() {
            return Err(format!(
                "the PNG is truncated (its {} chunk at byte {pos} runs past the end of the \
                 {} bytes; there is no IEND chunk)",
                fourcc(kind),
                b.len()
            ));
        }
        match kind {
            b"IDAT" => has_data = true,
            b"IEND" if has_data => return Ok(()),
            b"IEND" => return Err("the PNG holds no image data (no IDAT chunk)".to_string()),
            _ => {}
        }
        pos = end;
    }
}

/// JPEG: marker segments walked by their lengths to each start of scan (SOS), every scan's
/// entropy-coded data to the marker after it (progressive JPEGs have several scans, with
/// tables between them), until the end of image (EOI). What follows EOI is ignored: cameras
/// append trailers and MPF images there, and since EOI is found by the walk, not by looking
/// at the last bytes, nothing after it can hide a cut.
fn jpeg(b: &[u8]) -> Result<(), String> {
    let truncated_scan = || "the JPEG is truncated (its scan data has no EOI marker)".to_string();
    let mut pos = 2; // after SOI
    let mut scans = 0usize;
    loop {
        match b.get(pos) {
            None => return Err("the JPEG is truncated (it ends before its EOI marker)".to_string()),
            Some(0xFF) => {}
            Some(other) => {
                return Err(format!(
                    "the JPEG is corrupt (a marker was expected at byte {pos}, found 0x{other:02x})"
                ))
            }
        }
        let at = pos;
        // Any number of 0xFF fill bytes may precede a marker code.
        while b.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = b.get(pos) else {
            return Err("the JPEG is truncated (it ends before its EOI marker)".to_string());
        };
        pos += 1;
        match marker {
            0xD9 if scans > 0 => return Ok(()),
            0xD9 => {
                return Err("the JPEG holds no image data (EOI before any scan)".to_string());
            }
            // Standalone markers: no length.
            0x01 | 0xD0..=0xD7 => {}
            0x00 | 0xD8 => {
                return Err(format!(
                    "the JPEG is corrupt (unexpected marker 0xFF{marker:02X} at byte {at})"
                ))
            }
            _ => {
                let len = match b.get(pos..pos + 2) {
                    Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]) as usize,
                    _ => return Err(segment_cut(marker, at)),
                };
                if len < 2 {
                    return Err(format!(
                        "the JPEG is corrupt (the 0xFF{marker:02X} segment at byte {at} has \
                         length {len})"
                    ));
                }
                if pos + len > b.len() {
                    return Err(segment_cut(marker, at));
                }
                pos += len;
                if marker == 0xDA {
                    scans += 1;
                    pos = scan_end(b, pos).ok_or_else(truncated_scan)?;
                }
            }
        }
    }
}

fn segment_cut(marker: u8, at: usize) -> String {
    format!(
        "the JPEG is truncated (its 0xFF{marker:02X} segment at byte {at} runs past the end; \
         there is no EOI marker)"
    )
}

/// Where entropy-coded data starting at `from` ends: the position of the first marker that
/// is not a stuffed zero (`FF 00`) or a restart (`FF D0`–`FF D7`). None when the data runs
/// to the end of the file.
fn scan_end(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let ff = i + b.get(i..)?.iter().position(|&c| c == 0xFF)?;
        match *b.get(ff + 1)? {
            0x00 | 0xD0..=0xD7 => i = ff + 2,
            // A fill byte: the marker code comes after it.
            0xFF => i = ff + 1,
            _ => return Some(ff),
        }
    }
}

/// WEBP: the RIFF header's size against the real length, then every chunk (`VP8 `, `VP8L`,
/// `VP8X`, `ALPH`, `ANMF`, metadata…) inside the RIFF payload, with an image chunk among them.
/// Bytes after the RIFF payload are ignored.
fn webp(b: &[u8]) -> Result<(), String> {
    let riff = le32(b, 4).unwrap_or(0) as usize;
    let end = riff.saturating_add(8);
    if b.len() < end {
        return Err(format!(
            "the WEBP is truncated ({} bytes; its RIFF header says {end})",
            b.len()
        ));
    }
    let mut pos = 12;
    let mut has_image = false;
    while pos < end {
        let (Some(kind), Some(size)) = (b.get(pos..pos + 4), le32(b, pos + 4)) else {
            return Err(format!(
                "the WEBP is corrupt (a chunk header at byte {pos} runs past its RIFF size)"
            ));
        };
        let data_end = (pos + 8).saturating_add(size as usize);
        if data_end > end {
            return Err(format!(
                "the WEBP is truncated (its {} chunk at byte {pos} needs {size} bytes, {} are \
                 left)",
                fourcc(kind),
                end - (pos + 8).min(end)
            ));
        }
        if matches!(kind, b"VP8 " | b"VP8L" | b"ANMF") {
            has_image = true;
        }
        // Chunks are padded to an even size.
        pos = data_end + (size as usize & 1);
    }
    if has_image {
        Ok(())
    } else {
        Err("the WEBP holds no image data (no VP8, VP8L or ANMF chunk)".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::{jpeg_photo, png, png_opaque, webp};

    fn cuts(bytes: &[u8]) -> Vec<usize> {
        let n = bytes.len();
        vec![n / 2, n - 1, n * 9 / 10, 40.min(n - 1)]
    }

    #[test]
    fn whole_images_pass() {
        for bytes in [png(64, 64), png(300, 400), png_opaque(20, 10)] {
            png_ok(&bytes);
        }
        for bytes in [
            jpeg_photo(64, 64),
            jpeg_photo(1200, 900),
            progressive_jpeg(),
        ] {
            check_complete(ImageFormat::Jpeg, &bytes).unwrap();
        }
        for bytes in [
            webp(5, 7),
            lossless_webp(9, 4),
            lossy_webp(),
            extended_webp(),
        ] {
            check_complete(ImageFormat::Webp, &bytes).unwrap();
        }
        // The fixtures are real images, not just shapes.
        for bytes in [lossless_webp(9, 4), lossy_webp(), extended_webp()] {
            ::image::load_from_memory(&bytes).unwrap();
        }
    }

    fn png_ok(bytes: &[u8]) {
        check_complete(ImageFormat::Png, bytes).unwrap();
    }

    #[test]
    fn a_png_cut_anywhere_is_truncated() {
        let whole = png(64, 64);
        for at in cuts(&whole).into_iter().chain([whole.len() - 12, 33]) {
            let err = check_complete(ImageFormat::Png, &whole[..at]).unwrap_err();
            assert!(
                err.starts_with("the PNG is truncated ("),
                "cut at {at}: {err}"
            );
        }
        let err = check_complete(ImageFormat::Png, &whole[..whole.len() / 2]).unwrap_err();
        assert_eq!(
            err,
            format!(
                "the PNG is truncated (its IDAT chunk at byte 33 runs past the end of the {} \
                 bytes; there is no IEND chunk)",
                whole.len() / 2
            )
        );
    }

    #[test]
    fn bytes_after_iend_are_ignored_but_a_png_without_idat_is_empty() {
        let mut padded = png(2, 2);
        padded.extend_from_slice(&[0; 30]);
        png_ok(&padded);
        // Signature, IHDR, IEND: no pixel data at all.
        let mut empty = testkit::png_header(2, 2);
        empty.extend_from_slice(&png(2, 2)[png(2, 2).len() - 12..]);
        assert_eq!(
            check_complete(ImageFormat::Png, &empty).unwrap_err(),
            "the PNG holds no image data (no IDAT chunk)"
        );
    }

    #[test]
    fn jpegs_cut_anywhere_are_truncated() {
        for whole in [
            jpeg_photo(64, 64),
            jpeg_photo(1200, 900),
            progressive_jpeg(),
        ] {
            for at in cuts(&whole).into_iter().chain([whole.len() - 2]) {
                let err = check_complete(ImageFormat::Jpeg, &whole[..at]).unwrap_err();
                assert!(
                    err.starts_with("the JPEG is truncated ("),
                    "cut at {at}: {err}"
                );
            }
        }
        for whole in [jpeg_photo(64, 64), jpeg_photo(1200, 900)] {
            let err = check_complete(ImageFormat::Jpeg, &whole[..whole.len() / 2]).unwrap_err();
            assert_eq!(
                err,
                "the JPEG is truncated (its scan data has no EOI marker)"
            );
        }
        // Cut inside a header segment.
        let err = check_complete(ImageFormat::Jpeg, &jpeg_photo(64, 64)[..10]).unwrap_err();
        assert!(err.contains("segment at byte 2 runs past the end"), "{err}");
    }

    #[test]
    fn trailing_bytes_after_eoi_are_ignored() {
        let mut j = jpeg_photo(32, 32);
        j.extend_from_slice(&[0; 64]);
        check_complete(ImageFormat::Jpeg, &j).unwrap();
        // A second image after the first's EOI, as MPF cameras write it.
        j.extend_from_slice(&jpeg_photo(8, 8));
        check_complete(ImageFormat::Jpeg, &j).unwrap();
    }

    #[test]
    fn a_jpeg_with_no_scan_or_garbage_between_segments_is_refused() {
        // SOI, then EOI at once.
        assert_eq!(
            check_complete(ImageFormat::Jpeg, &[0xFF, 0xD8, 0xFF, 0xD9]).unwrap_err(),
            "the JPEG holds no image data (EOI before any scan)"
        );
        let mut j = jpeg_photo(16, 16);
        j[2] = 0x12;
        assert!(check_complete(ImageFormat::Jpeg, &j)
            .unwrap_err()
            .contains("a marker was expected at byte 2"));
    }

    #[test]
    fn stuffed_bytes_restarts_and_fill_bytes_do_not_end_a_scan() {
        // SOS (a minimal header), data with FF 00, FF D3 and FF FF fill before EOI.
        let j = [
            0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00, 0x12, 0xFF,
            0x00, 0x34, 0xFF, 0xD3, 0x56, 0xFF, 0xFF, 0xD9,
        ];
        check_complete(ImageFormat::Jpeg, &j).unwrap();
        for at in [14, 16, 17, 19, 20, 21] {
            assert!(
                check_complete(ImageFormat::Jpeg, &j[..at]).is_err(),
                "cut at {at}"
            );
        }
    }

    #[test]
    fn webps_cut_anywhere_are_truncated() {
        for whole in [lossless_webp(9, 4), lossy_webp(), extended_webp()] {
            for at in cuts(&whole) {
                let err = check_complete(ImageFormat::Webp, &whole[..at]).unwrap_err();
                assert!(
                    err.starts_with(&format!(
                        "the WEBP is truncated ({at} bytes; its RIFF header says {})",
                        whole.len()
                    )),
                    "cut at {at}: {err}"
                );
            }
        }
    }

    #[test]
    fn a_webp_chunk_larger_than_the_riff_is_truncated() {
        let mut w = webp(5, 7);
        w[16] = 0x40; // the VP8L chunk now claims 64 bytes; the RIFF holds 10
        assert_eq!(
            check_complete(ImageFormat::Webp, &w).unwrap_err(),
            "the WEBP is truncated (its VP8L chunk at byte 12 needs 64 bytes, 10 are left)"
        );
        let mut padded = webp(5, 7);
        padded.extend_from_slice(&[0; 7]);
        check_complete(ImageFormat::Webp, &padded).unwrap();
    }

    #[test]
    fn a_webp_chunk_of_odd_size_is_padded() {
        let w = riff(&[
            (b"EXIF", &b"Exif\0\0MM\0"[..]),
            (b"VP8 ", &lossy_webp()[20..]),
        ]);
        check_complete(ImageFormat::Webp, &w).unwrap();
    }

    #[test]
    fn a_webp_with_only_a_vp8x_header_holds_no_image() {
        let w = riff(&[(b"VP8X", &vp8x(4, 4)[..])]);
        assert!(check_complete(ImageFormat::Webp, &w)
            .unwrap_err()
            .contains("no image data"));
    }

    /// A RIFF/WEBP file of `chunks`, each padded to an even size.
    fn riff(chunks: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
        let mut body = b"WEBP".to_vec();
        for (kind, data) in chunks {
            body.extend_from_slice(*kind);
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(data);
            if data.len() % 2 == 1 {
                body.push(0);
            }
        }
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn vp8x(w: u32, h: u32) -> Vec<u8> {
        let mut d = vec![0x10, 0, 0, 0]; // flags: alpha
        d.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
        d.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
        d
    }

    /// A real lossless WEBP from the `image` crate's encoder.
    fn lossless_webp(w: u32, h: u32) -> Vec<u8> {
        use ::image::ImageEncoder as _;
        let mut out = Vec::new();
        ::image::codecs::webp::WebPEncoder::new_lossless(&mut out)
            .write_image(
                testkit::photo_rgb(w, h).as_raw(),
                w,
                h,
                ::image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        out
    }

    fn base64(text: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap()
    }

    /// A lossy (VP8) 1×1 WEBP, the one browsers' feature tests decode (the `image` crate
    /// encodes lossless only).
    fn lossy_webp() -> Vec<u8> {
        base64("UklGRiIAAABXRUJQVlA4IBYAAAAwAQCdASoBAAEADsD+JaQAA3AAAAAA")
    }

    /// An extended WEBP: VP8X, ALPH, VP8 (a 1×1 lossy image with alpha, as above).
    fn extended_webp() -> Vec<u8> {
        base64(
            "UklGRkoAAABXRUJQVlA4WAoAAAAQAAAAAAAAAAAAQUxQSAwAAAARBxAR/Q9ERP8DAABWUDggGAAAABQBAJ0B\
             KgEAAQAAAP4AAA3AAP7mtQAAAA==",
        )
    }

    /// A progressive JPEG (SOF2): DQT, SOF2, then DHT and SOS for each of several scans,
    /// as progressive encoders write them. Structurally complete; its scan data is token.
    fn progressive_jpeg() -> Vec<u8> {
        let mut j = vec![0xFF, 0xD8];
        let seg = |j: &mut Vec<u8>, marker: u8, data: &[u8]| {
            j.extend_from_slice(&[0xFF, marker]);
            j.extend_from_slice(&((data.len() + 2) as u16).to_be_bytes());
            j.extend_from_slice(data);
        };
        let mut dqt = vec![0x00];
        dqt.extend_from_slice(&[1; 64]);
        seg(&mut j, 0xDB, &dqt);
        seg(
            &mut j,
            0xC2,
            &[0x08, 0x00, 0x10, 0x00, 0x10, 0x01, 0x01, 0x11, 0x00],
        );
        for (i, scan) in [(0u8, 0u8), (1, 5), (6, 63)].into_iter().enumerate() {
            let mut dht = vec![if i == 0 { 0x00 } else { 0x10 }, 1];
            dht.extend_from_slice(&[0; 15]);
            dht.push(0x00);
            seg(&mut j, 0xC4, &dht);
            seg(&mut j, 0xDA, &[0x01, 0x01, 0x00, scan.0, scan.1, 0x00]);
            j.extend_from_slice(&[0x5A, 0xFF, 0x00, 0xA5, 0x0F, 0x3C, 0xC3, 0x99]);
        }
        j.extend_from_slice(&[0xFF, 0xD9]);
        j
    }
}
