//! Images made in code, so tests need no files: real decodable ones (PNG, JPEG) and ones
//! that are only well-formed headers (for sniffers and decompression-bomb checks).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage, RgbaImage};

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// A complete, decodable 1×1 red PNG.
pub const TINY_PNG: [u8; 69] = [
    137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0,
    0, 0, 144, 119, 83, 222, 0, 0, 0, 12, 73, 68, 65, 84, 120, 156, 99, 248, 207, 192, 0, 0, 3, 1,
    1, 0, 201, 254, 146, 239, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130,
];

/// Appends one PNG chunk: length, type, data, CRC of type and data.
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// The 13 bytes of an IHDR chunk: size, bit depth 8, `color_type`, no interlace.
fn ihdr(width: u32, height: u32, color_type: u8) -> Vec<u8> {
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, color_type, 0, 0, 0]);
    ihdr
}

/// A valid 8-bit greyscale PNG of `width`×`height`, solid grey (0x80), its scanlines in
/// stored (uncompressed) deflate blocks. Memoized: big ones are slow to build in a debug
/// build, and every call for a size gives the same bytes.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    type Cache = Mutex<HashMap<(u32, u32), Vec<u8>>>;
    static CACHE: LazyLock<Cache> = LazyLock::new(Default::default);
    if let Some(hit) = CACHE.lock().unwrap().get(&(width, height)) {
        return hit.clone();
    }
    let made = grey_png(width, height);
    CACHE.lock().unwrap().insert((width, height), made.clone());
    made
}

fn grey_png(width: u32, height: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for _ in 0..height {
        raw.push(0); // filter: none
        raw.extend(std::iter::repeat_n(0x80u8, width as usize));
    }
    let mut blocks: Vec<&[u8]> = raw.chunks(65535).collect();
    if blocks.is_empty() {
        blocks.push(&[]);
    }
    let mut z = vec![0x78, 0x01];
    for (i, block) in blocks.iter().enumerate() {
        z.push(u8::from(i == blocks.len() - 1));
        z.extend_from_slice(&(block.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(block.len() as u16)).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler2::adler32_slice(&raw).to_be_bytes());

    let mut out = PNG_SIGNATURE.to_vec();
    chunk(&mut out, b"IHDR", &ihdr(width, height, 0));
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// PNG signature plus a valid RGB IHDR chunk for `width`×`height`, and nothing else: enough
/// for any header reader, far smaller than a real image of that size.
pub fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut out = PNG_SIGNATURE.to_vec();
    chunk(&mut out, b"IHDR", &ihdr(width, height, 2));
    out
}

/// A well-formed PNG claiming `width`×`height` RGBA pixels, with a token of pixel data:
/// what a decompression bomb looks like before its data is inflated.
pub fn png_header_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = PNG_SIGNATURE.to_vec();
    chunk(&mut out, b"IHDR", &ihdr(width, height, 6));
    // An empty zlib stream: the bytes a bomb would inflate are not needed to refuse it.
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A smooth colour field with some texture, like a photo to a JPEG encoder.
pub fn photo_rgb(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let t = ((x * 7 + y * 13) % 17) as u8;
        image::Rgb([
            (x * 255 / w.max(1)) as u8 ^ t,
            (y * 255 / h.max(1)) as u8,
            ((x + y) * 127 / (w + h).max(1)) as u8 + t,
        ])
    })
}

/// [`photo_rgb`] as a decodable JPEG (quality 90).
pub fn jpeg_photo(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(photo_rgb(w, h).as_raw(), w, h, ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// [`photo_rgb`] as a decodable PNG whose left half is transparent.
pub fn png_with_alpha(w: u32, h: u32) -> Vec<u8> {
    let rgb = photo_rgb(w, h);
    let rgba = RgbaImage::from_fn(w, h, |x, y| {
        let p = rgb.get_pixel(x, y).0;
        image::Rgba([p[0], p[1], p[2], if x < w / 2 { 0 } else { 255 }])
    });
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(rgba.as_raw(), w, h, ExtendedColorType::Rgba8)
        .unwrap();
    out
}

/// [`photo_rgb`] as a decodable RGB PNG (no alpha channel).
pub fn png_opaque(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(photo_rgb(w, h).as_raw(), w, h, ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// A baseline JPEG that is structurally whole but not decodable: SOI, JFIF APP0, SOF0 with
/// the size, a start of scan with a few bytes of scan data, EOI (no tables). What a sniffer
/// and a truncation check read.
pub fn jpeg(w: u16, h: u16) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8];
    out.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x10]);
    out.extend_from_slice(b"JFIF\0\x01\x01\x00\x00\x01\x00\x01\x00\x00");
    out.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08]);
    out.extend_from_slice(&h.to_be_bytes());
    out.extend_from_slice(&w.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x01, 0x11, 0x00]);
    out.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00]);
    out.extend_from_slice(&[0x5A, 0xA5, 0x00]);
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

/// A lossless (VP8L) WEBP whose header encodes `w`×`h`.
pub fn webp(w: u32, h: u32) -> Vec<u8> {
    let mut payload = vec![0x2F];
    let bits = (w - 1) | ((h - 1) << 14);
    payload.extend_from_slice(&bits.to_le_bytes());
    payload.extend_from_slice(&[0x00, 0x00, 0x00, 0x00, 0x00]);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((4 + 8 + payload.len()) as u32).to_le_bytes());
    out.extend_from_slice(b"WEBPVP8L");
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn gif_frame(out: &mut Vec<u8>, w: u16, h: u16) {
    // Graphic control extension, then an image descriptor with one pixel of LZW data.
    out.extend_from_slice(&[0x21, 0xF9, 0x04, 0x00, 0x0A, 0x00, 0x00, 0x00]);
    out.push(0x2C);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&w.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.push(0x00);
    out.extend_from_slice(&[0x02, 0x02, 0x44, 0x01, 0x00]);
}

/// A GIF89a with `frames` frames; a comment full of 0x2C bytes (the frame introducer)
/// comes first so only a real block walk counts frames right.
pub fn gif(w: u16, h: u16, frames: usize) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend_from_slice(&w.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&[0x80, 0x00, 0x00]);
    out.extend_from_slice(&[0, 0, 0, 0xFF, 0xFF, 0xFF]);
    out.extend_from_slice(&[0x21, 0xFE, 0x04, 0x2C, 0x2C, 0x2C, 0x2C, 0x00]);
    for _ in 0..frames {
        gif_frame(&mut out, w, h);
    }
    out.push(0x3B);
    out
}

/// The start of a PDF: a common thing sent where an image belongs.
pub fn pdf() -> Vec<u8> {
    b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n".to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_crc_matches_the_tiny_png() {
        // The IHDR CRC of TINY_PNG was computed by zlib.
        assert_eq!(&png_header(1, 1)[..], &TINY_PNG[..33]);
    }

    #[test]
    fn every_png_decodes_to_its_size() {
        for bytes in [
            png(3, 2),
            png(300, 400), // several stored deflate blocks
            png_opaque(3, 2),
            png_with_alpha(3, 2),
            TINY_PNG.to_vec(),
        ] {
            let img = image::load_from_memory(&bytes).expect("decodes");
            assert!(img.width() >= 1 && img.height() >= 1);
        }
        let big = image::load_from_memory(&png(300, 400)).unwrap();
        assert_eq!((big.width(), big.height()), (300, 400));
        let photo = image::load_from_memory(&jpeg_photo(30, 20)).unwrap();
        assert_eq!((photo.width(), photo.height()), (30, 20));
    }
}
