//! What an inline image really is: format by magic bytes (never the declared type),
//! dimensions from the header (no full decode), whether it is whole (its structure walked
//! to the end marker: `complete.rs`), and animated-GIF detection.

/// The image formats OpenAI vision accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
    Gif,
}

impl ImageFormat {
    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
            Self::Gif => "image/gif",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "PNG",
            Self::Jpeg => "JPEG",
            Self::Webp => "WEBP",
            Self::Gif => "GIF",
        }
    }
}

/// An image that passed every byte-level check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub mime: &'static str,
    pub width: u32,
    pub height: u32,
}

/// Identifies `bytes` as a still PNG, JPEG, WEBP or GIF, reads its dimensions and checks
/// that it is not truncated. The error is a sentence for a person, without a field prefix.
pub fn sniff_image(bytes: &[u8]) -> Result<ImageInfo, String> {
    if bytes.is_empty() {
        return Err("the image is empty (0 bytes)".to_string());
    }
    let format = detect_format(bytes).ok_or_else(|| not_an_image(bytes))?;
    if format == ImageFormat::Gif {
        match gif_frame_count(bytes)? {
            0 => return Err("the GIF holds no image (no frame before its end)".to_string()),
            1 => {}
            _ => return Err("animated GIFs are not supported".to_string()),
        }
    }
    let size = imagesize::blob_size(bytes).map_err(|_| {
        format!(
            "the {} header is truncated or corrupt: its width and height can't be read",
            format.name()
        )
    })?;
    if size.width == 0 || size.height == 0 {
        return Err(format!(
            "the {} image has a zero dimension ({}x{} pixels)",
            format.name(),
            size.width,
            size.height
        ));
    }
    // PNG allows up to 2^31-1; anything larger is a corrupt header, and the store keeps i32.
    let (Ok(width), Ok(height)) = (i32::try_from(size.width), i32::try_from(size.height)) else {
        return Err(format!(
            "the {} header claims an impossible size ({}x{} pixels)",
            format.name(),
            size.width,
            size.height
        ));
    };
    super::complete::check_complete(format, bytes)?;
    Ok(ImageInfo {
        format,
        mime: format.mime(),
        width: width as u32,
        height: height as u32,
    })
}

fn detect_format(b: &[u8]) -> Option<ImageFormat> {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") && b.get(12..16) == Some(b"IHDR") {
        Some(ImageFormat::Png)
    } else if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if b.len() >= 16 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        // The first chunk must be one of the three bitstream kinds.
        matches!(&b[12..16], b"VP8 " | b"VP8L" | b"VP8X").then_some(ImageFormat::Webp)
    } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        Some(ImageFormat::Gif)
    } else {
        None
    }
}

fn not_an_image(b: &[u8]) -> String {
    let first: Vec<String> = b.iter().take(4).map(|x| format!("{x:02x}")).collect();
    let mut msg = format!(
        "not a PNG, JPEG, WEBP or GIF image (first bytes {}",
        first.join(" ")
    );
    if let Some(kind) = looks_like(b) {
        msg.push_str(": looks like ");
        msg.push_str(kind);
    }
    msg.push(')');
    msg
}

/// A guess at what a rejected payload is, so the person can see what went wrong upstream.
fn looks_like(b: &[u8]) -> Option<&'static str> {
    let starts = |p: &[u8]| b.starts_with(p);
    let ftyp_brand = (b.len() >= 12 && &b[4..8] == b"ftyp").then(|| &b[8..12]);
    let text_head = || {
        String::from_utf8_lossy(&b[..b.len().min(256)])
            .trim_start()
            .to_ascii_lowercase()
    };
    if starts(b"%PDF") {
        Some("a PDF")
    } else if starts(b"\x89PNG") {
        Some("a damaged PNG")
    } else if starts(b"GIF8") || starts(b"RIFF") && b.get(8..12) == Some(b"WEBP") {
        Some("a damaged or unusual GIF/WEBP")
    } else if starts(b"BM") {
        Some("a BMP image")
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        Some("a TIFF image")
    } else if let Some(brand) = ftyp_brand {
        match brand {
            b"avif" | b"avis" => Some("an AVIF image"),
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"mif1" | b"msf1" => Some("a HEIC/HEIF image"),
            _ => Some("an MP4/QuickTime video"),
        }
    } else if starts(&[0xFF, 0x0A]) || starts(b"\0\0\0\x0cJXL ") {
        Some("a JPEG XL image")
    } else if starts(b"8BPS") {
        Some("a Photoshop document")
    } else if starts(&[0, 0, 1, 0]) {
        Some("an ICO icon")
    } else if starts(b"PK\x03\x04") {
        Some("a ZIP archive (or an Office document)")
    } else if starts(&[0x1F, 0x8B]) {
        Some("gzip-compressed data")
    } else if b
        .iter()
        .take(256)
        .all(|&c| c.is_ascii_graphic() || c.is_ascii_whitespace())
    {
        let s = text_head();
        if s.starts_with("<svg") || (s.starts_with("<?xml") && s.contains("<svg")) {
            Some("an SVG image, which is not supported")
        } else if s.starts_with("<!doctype html") || s.starts_with("<html") {
            Some("an HTML page")
        } else if s.starts_with('<') {
            Some("XML")
        } else if s.starts_with('{') || s.starts_with('[') {
            Some("JSON")
        } else if s.starts_with("data:") {
            Some("a data URL; send it in data_url instead")
        } else if s.starts_with("http://") || s.starts_with("https://") {
            Some("a URL; send it in image_url instead")
        } else if s.len() >= 16
            && s.bytes().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'\n' | b'\r')
            })
        {
            Some("base64 text: was the image encoded twice?")
        } else {
            Some("text")
        }
    } else {
        None
    }
}

/// Counts the frames (image descriptors) of a GIF by walking its block structure to the
/// trailer (0x3B): a byte search would mistake a 0x2C inside pixel data or a comment for a
/// frame, and a GIF whose blocks run past the end, or that stops before its trailer, is
/// truncated. The walk stops at a second frame: that is enough to refuse it as animated.
fn gif_frame_count(b: &[u8]) -> Result<usize, String> {
    let cut = |what: &str, at: usize| {
        format!("the GIF is truncated (its {what} at byte {at} runs past the end)")
    };
    let mut r = Reader { b, pos: 6 };
    // Logical screen descriptor: width, height, packed flags, background, aspect.
    r.skip(4).ok_or_else(|| cut("screen descriptor", 6))?;
    let packed = r.byte().ok_or_else(|| cut("screen descriptor", 6))?;
    r.skip(2).ok_or_else(|| cut("screen descriptor", 6))?;
    if packed & 0x80 != 0 {
        r.skip(color_table_len(packed))
            .ok_or_else(|| cut("colour table", 13))?;
    }
    let mut frames = 0;
    loop {
        let at = r.pos;
        let Some(introducer) = r.byte() else {
            return Err("the GIF is truncated (it ends before its trailer)".to_string());
        };
        match introducer {
            0x3B => return Ok(frames),
            0x21 => {
                r.skip(1).ok_or_else(|| cut("extension block", at))?; // label
                r.skip_sub_blocks()
                    .ok_or_else(|| cut("extension block", at))?;
            }
            0x2C => {
                frames += 1;
                if frames > 1 {
                    // Enough to decide; no need to walk the rest.
                    return Ok(frames);
                }
                let frame = || cut("image data", at);
                r.skip(8).ok_or_else(frame)?; // left, top, width, height
                let packed = r.byte().ok_or_else(frame)?;
                if packed & 0x80 != 0 {
                    r.skip(color_table_len(packed)).ok_or_else(frame)?;
                }
                r.skip(1).ok_or_else(frame)?; // LZW minimum code size
                r.skip_sub_blocks().ok_or_else(frame)?;
            }
            other => {
                return Err(format!(
                    "the GIF is corrupt (unexpected block 0x{other:02x} at byte {at})"
                ))
            }
        }
    }
}

fn color_table_len(packed: u8) -> usize {
    3 * (1usize << ((packed & 0x07) + 1))
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let v = *self.b.get(self.pos)?;
        self.pos += 1;
        Some(v)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        let end = self.pos.checked_add(n)?;
        if end > self.b.len() {
            return None;
        }
        self.pos = end;
        Some(())
    }

    /// Data sub-blocks: a length byte and that many bytes, until a zero length.
    fn skip_sub_blocks(&mut self) -> Option<()> {
        loop {
            let len = self.byte()?;
            if len == 0 {
                return Some(());
            }
            self.skip(len as usize)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::{gif, jpeg, pdf, png, webp};

    #[test]
    fn sniffs_each_supported_format_with_its_dimensions() {
        let cases = [
            (png(3, 2), ImageFormat::Png, "image/png", 3, 2),
            (jpeg(640, 480), ImageFormat::Jpeg, "image/jpeg", 640, 480),
            (webp(5, 7), ImageFormat::Webp, "image/webp", 5, 7),
            (gif(4, 9, 1), ImageFormat::Gif, "image/gif", 4, 9),
        ];
        for (bytes, format, mime, w, h) in cases {
            let info = sniff_image(&bytes).unwrap();
            assert_eq!(
                info,
                ImageInfo {
                    format,
                    mime,
                    width: w,
                    height: h
                }
            );
        }
    }

    #[test]
    fn a_pdf_is_named_in_the_reason() {
        let err = sniff_image(&pdf()).unwrap_err();
        assert_eq!(
            err,
            "not a PNG, JPEG, WEBP or GIF image (first bytes 25 50 44 46: looks like a PDF)"
        );
    }

    #[test]
    fn unknown_bytes_are_shown_without_a_guess() {
        let err = sniff_image(&[0x00, 0x01, 0x02, 0x03, 0x04]).unwrap_err();
        assert_eq!(
            err,
            "not a PNG, JPEG, WEBP or GIF image (first bytes 00 01 02 03)"
        );
    }

    #[test]
    fn other_image_kinds_are_recognised() {
        assert!(sniff_image(b"BM\x3a\0\0\0\0\0\0\0")
            .unwrap_err()
            .contains("BMP"));
        let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
        assert!(sniff_image(heic).unwrap_err().contains("HEIC"));
        let svg = b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"/>";
        assert!(sniff_image(svg).unwrap_err().contains("SVG"));
        let twice = b"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4";
        assert!(sniff_image(twice).unwrap_err().contains("encoded twice"));
    }

    #[test]
    fn animated_gif_is_rejected() {
        assert_eq!(
            sniff_image(&gif(2, 2, 2)).unwrap_err(),
            "animated GIFs are not supported"
        );
    }

    #[test]
    fn frame_introducer_bytes_inside_sub_blocks_do_not_count_as_frames() {
        // The fixture's comment holds four 0x2C bytes; a naive search would see 5 frames.
        let one = gif(2, 2, 1);
        assert!(one.iter().filter(|&&b| b == 0x2C).count() > 1);
        assert_eq!(gif_frame_count(&one).unwrap(), 1);
    }

    #[test]
    fn a_gif_cut_anywhere_is_truncated() {
        let g = gif(2, 2, 1);
        // Just before the trailer, inside the frame's data, the extension, the colour table.
        let frame = g.len() - 1 - 15;
        for (at, reason) in [
            (
                g.len() - 1,
                "the GIF is truncated (it ends before its trailer)",
            ),
            (
                g.len() - 3,
                &*format!(
                    "the GIF is truncated (its image data at byte {} runs past the end)",
                    frame
                ),
            ),
            (
                g.len() / 2,
                "the GIF is truncated (its extension block at byte 19 runs past the end)",
            ),
            (
                15,
                "the GIF is truncated (its colour table at byte 13 runs past the end)",
            ),
        ] {
            assert_eq!(sniff_image(&g[..at]).unwrap_err(), reason, "cut at {at}");
        }
    }

    #[test]
    fn gif_with_no_frame_is_rejected() {
        let g = gif(2, 2, 0);
        assert!(sniff_image(&g).unwrap_err().contains("no image"));
    }

    #[test]
    fn gif_with_a_stray_block_is_corrupt() {
        let mut g = gif(2, 2, 1);
        let trailer = g.len() - 1;
        g[trailer] = 0x99;
        assert!(sniff_image(&g)
            .unwrap_err()
            .contains("unexpected block 0x99"));
    }

    #[test]
    fn zero_dimensions_are_rejected() {
        assert!(sniff_image(&png(0, 0))
            .unwrap_err()
            .contains("zero dimension"));
        assert!(sniff_image(&jpeg(0, 10)).unwrap_err().contains("0x10"));
        assert!(sniff_image(&gif(0, 1, 1)).unwrap_err().contains("zero"));
    }

    #[test]
    fn truncated_header_is_reported() {
        let p = png(4, 4);
        let err = sniff_image(&p[..18]).unwrap_err();
        assert!(err.contains("PNG header is truncated"), "{err}");
    }

    #[test]
    fn empty_is_rejected() {
        assert!(sniff_image(&[]).unwrap_err().contains("empty"));
    }

    #[test]
    fn png_signature_without_ihdr_is_not_a_png() {
        let mut p = png(1, 1);
        p[12..16].copy_from_slice(b"XXXX");
        assert!(sniff_image(&p).unwrap_err().contains("damaged PNG"));
    }
}
