//! Downscaling of inline images to the largest size the model will actually look at, so a
//! batch file carries more images for the same billed tokens. Owns the size rules per vision
//! formula and the decode (under limits) → resize → encode path; knows nothing of items.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::codecs::png::{self, PngEncoder};
use image::metadata::Orientation;
use image::{
    DynamicImage, GrayImage, ImageDecoder, ImageEncoder, ImageFormat, ImageReader, Limits,
    RgbImage, RgbaImage,
};

use super::item::human_size;
use crate::cost::image_tokens::{formula_for, patch_count, VisionFormula};
use crate::domain::Detail;

/// Widest or tallest image decoded for resizing. Larger ones are refused rather than decoded:
/// a few hundred header bytes can claim billions of pixels.
pub const MAX_DECODE_SIDE: u32 = 16_384;
/// Most memory one decode may take (the decoded pixels and the decoder's buffers).
pub const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;
/// Photos survive it without visible loss at the sizes the models look at.
pub const JPEG_QUALITY: u8 = 85;

/// Low detail on tile models: the model gets a 512×512 fit.
const LOW_SIDE: u64 = 512;
/// High detail on tile models: fit within 2048×2048, then the shortest side at most 768.
const HIGH_LONG_SIDE: u64 = 2048;
const HIGH_SHORT_SIDE: u64 = 768;
const PATCH_SIDE: u64 = 32;

/// Who will look at the images: the job's model and detail decide the useful size.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DownscaleTarget {
    pub model: String,
    pub detail: Detail,
}

impl DownscaleTarget {
    pub fn new(model: impl Into<String>, detail: Detail) -> Self {
        Self {
            model: model.into(),
            detail,
        }
    }

    /// [`target_size`] for this model and detail.
    pub fn size_for(&self, width: u32, height: u32) -> Option<(u32, u32)> {
        target_size(&self.model, width, height, self.detail)
    }
}

/// An image re-encoded at its new size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downscaled {
    pub bytes: Vec<u8>,
    pub mime: &'static str,
    pub width: u32,
    pub height: u32,
}

/// The size `model` would shrink a `width`×`height` image to before looking at it at
/// `detail`, or `None` when it would not shrink it. Never larger than the input in either
/// direction, and an image of that size is billed no more tokens than the original (the
/// same for tile models; patch models may lose a partial patch row to rounding).
pub fn target_size(model: &str, width: u32, height: u32, detail: Detail) -> Option<(u32, u32)> {
    if width == 0 || height == 0 {
        return None;
    }
    let (w, h) = match formula_for(model) {
        VisionFormula::Tile { .. } => match detail {
            Detail::Low => fit_within(width, height, LOW_SIDE),
            Detail::High | Detail::Auto => tile_fit(width, height),
        },
        // Patch models were observed to ignore `detail`.
        VisionFormula::Patch { max_patches, .. } => patch_fit(width, height, max_patches)?,
    };
    ((w, h) != (width, height)).then_some((w, h))
}

/// Scales the longest side down to `side` (downscale only), truncating like OpenAI does.
fn fit_within(width: u32, height: u32, side: u64) -> (u32, u32) {
    let (w, h) = (u64::from(width), u64::from(height));
    let long = w.max(h);
    if long <= side {
        return (width, height);
    }
    (
        narrow((w * side / long).max(1)),
        narrow((h * side / long).max(1)),
    )
}

/// The image size `cost::image_tokens::tile_count` counts tiles on; at exactly that size
/// OpenAI resizes nothing, so the tile count (and the tokens) are the original's.
fn tile_fit(width: u32, height: u32) -> (u32, u32) {
    let (mut w, mut h) = (u64::from(width), u64::from(height));
    let long = w.max(h);
    if long > HIGH_LONG_SIDE {
        w = (w * HIGH_LONG_SIDE / long).max(1);
        h = (h * HIGH_LONG_SIDE / long).max(1);
    }
    let short = w.min(h);
    if short > HIGH_SHORT_SIDE {
        w = (w * HIGH_SHORT_SIDE / short).max(1);
        h = (h * HIGH_SHORT_SIDE / short).max(1);
    }
    (narrow(w), narrow(h))
}

fn raw_patches(width: u32, height: u32) -> u64 {
    u64::from(width).div_ceil(PATCH_SIDE) * u64::from(height).div_ceil(PATCH_SIDE)
}

/// The largest same-shape size whose 32 px patch grid is no bigger than the one OpenAI bills
/// for the original (after its own shrink). OpenAI then has nothing left to shrink.
fn patch_fit(width: u32, height: u32, cap: u32) -> Option<(u32, u32)> {
    if raw_patches(width, height) <= u64::from(cap) {
        return None;
    }
    let budget = patch_count(width, height, cap);
    let wide = width >= height;
    let (long, short) = if wide {
        (width, height)
    } else {
        (height, width)
    };
    let at = |l: u32| {
        let s = (u64::from(short) * u64::from(l) + u64::from(long) / 2) / u64::from(long);
        let s = narrow(s.max(1));
        if wide {
            (l, s)
        } else {
            (s, l)
        }
    };
    // Patches grow with the long side: bisect. `lo` fits (one patch), `hi` (the original)
    // does not, since its raw grid is over the cap and the budget is at most the cap.
    let (mut lo, mut hi) = (1u32, long);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let (w, h) = at(mid);
        if raw_patches(w, h) <= budget {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(at(lo))
}

fn narrow(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Downscales `bytes` (PNG, JPEG, WEBP or GIF) to what `target` will look at. `Ok(None)`:
/// keep the original, because the model would not shrink it or the re-encoded image is not
/// smaller. The error is a sentence for a person, without a field prefix.
pub fn downscale_for(bytes: &[u8], target: &DownscaleTarget) -> Result<Option<Downscaled>, String> {
    // The header alone settles most images; an EXIF rotation swaps the sides the model sees.
    if let Ok(size) = imagesize::blob_size(bytes) {
        let (w, h) = (narrow(size.width as u64), narrow(size.height as u64));
        if target.size_for(w, h).is_none() && target.size_for(h, w).is_none() {
            return Ok(None);
        }
    }
    run(bytes, |w, h| target.size_for(w, h))
}

/// Downscales `bytes` (PNG, JPEG, WEBP or GIF) to exactly `target` (width, height, as the
/// image is displayed: after its EXIF rotation). `Ok(None)`: keep the original, because it
/// is no larger than `target` already or the re-encoded image is not smaller.
///
/// Output: a JPEG stays a JPEG (quality 85). A PNG, WEBP or GIF becomes a PNG when it has
/// transparent pixels, since JPEG cannot carry them and flattening would change what the
/// model sees; otherwise a JPEG at quality 85, several times smaller than a PNG of a photo
/// at the same size. The EXIF rotation is applied to the pixels (the metadata is dropped)
/// and an ICC profile is kept, so the model sees the image upright and in its colours.
pub fn downscale(bytes: &[u8], target: (u32, u32)) -> Result<Option<Downscaled>, String> {
    run(bytes, |_, _| Some(target))
}

/// Decodes, asks `size_for` the displayed size to produce, resizes and encodes.
fn run(
    bytes: &[u8],
    size_for: impl Fn(u32, u32) -> Option<(u32, u32)>,
) -> Result<Option<Downscaled>, String> {
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| {
            matches!(
                f,
                ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif
            )
        })
        .ok_or_else(|| "not a PNG, JPEG, WEBP or GIF image".to_string())?;
    let name = format_name(format);
    // Decoders are written to fail, not panic, on hostile input; a panic still must not
    // take down the other items of the request.
    catch_unwind(AssertUnwindSafe(|| {
        run_format(bytes, format, name, size_for)
    }))
    .unwrap_or_else(|_| {
        Err(format!(
            "the {name} could not be decoded (the decoder failed)"
        ))
    })
}

fn run_format(
    bytes: &[u8],
    format: ImageFormat,
    name: &str,
    size_for: impl Fn(u32, u32) -> Option<(u32, u32)>,
) -> Result<Option<Downscaled>, String> {
    let scaled = match format {
        ImageFormat::Jpeg => decode_jpeg_scaled(bytes, &size_for),
        _ => None,
    };
    let decoded = match scaled {
        Some(decoded) => decoded,
        None => decode(bytes, format, name)?,
    };
    let (w, h) = decoded.size;
    let turned = swaps_sides(decoded.orientation);
    let shown = if turned { (h, w) } else { (w, h) };
    let Some((tw, th)) = size_for(shown.0, shown.1) else {
        return Ok(None);
    };
    let enlarges = tw >= shown.0 && th >= shown.1;
    if enlarges || tw == 0 || th == 0 {
        return Ok(None);
    }
    // Resize first, rotate the small result after: cheaper, same pixels.
    let stored_target = if turned { (th, tw) } else { (tw, th) };
    let mut small = resize(decoded.pixels, stored_target)?;
    small.apply_orientation(decoded.orientation);

    let (out, mime) = encode(&small, format, decoded.icc)?;
    if out.len() >= bytes.len() {
        return Ok(None);
    }
    Ok(Some(Downscaled {
        bytes: out,
        mime,
        width: small.width(),
        height: small.height(),
    }))
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WEBP",
        ImageFormat::Gif => "GIF",
        _ => "image",
    }
}

fn swaps_sides(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

struct Decoded {
    /// At the image's size, or (JPEG decoded through its DCT at 1/2, 1/4 or 1/8) smaller,
    /// but never smaller than the size it is resized to.
    pixels: DynamicImage,
    /// The image's own width and height, as stored (before its EXIF rotation).
    size: (u32, u32),
    orientation: Orientation,
    icc: Option<Vec<u8>>,
}

/// A JPEG decoded at the smallest DCT scale (1/8, 1/4, 1/2 or 1) that still covers the size
/// `size_for` asks for: a 512 px target needs a quarter of a 1080×1350 photo's pixels, and
/// the decoder skips the rest of the inverse DCT, upsampling and colour conversion. `None`
/// when this path does not apply or fails (CMYK, 16-bit, a decoder error): the caller then
/// decodes in full, with its own checks and messages.
fn decode_jpeg_scaled(
    bytes: &[u8],
    size_for: &impl Fn(u32, u32) -> Option<(u32, u32)>,
) -> Option<Decoded> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.set_max_decoding_buffer_size(usize::try_from(MAX_DECODE_BYTES).ok()?);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    if w > MAX_DECODE_SIDE || h > MAX_DECODE_SIDE {
        return None;
    }
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let turned = swaps_sides(orientation);
    let (tw, th) = match size_for(if turned { h } else { w }, if turned { w } else { h }) {
        Some((tw, th)) if turned => (th, tw),
        Some(target) => target,
        None => return None,
    };
    let (sw, sh) = decoder
        .scale(u16::try_from(tw).ok()?, u16::try_from(th).ok()?)
        .ok()?;
    let (sw, sh) = (u32::from(sw), u32::from(sh));
    // Resizing must only shrink: a scale that lost a pixel in one direction is not used.
    if sw < tw || sh < th {
        return None;
    }
    let pixels = decoder.decode().ok()?;
    let pixels = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            DynamicImage::ImageRgb8(RgbImage::from_raw(sw, sh, pixels)?)
        }
        jpeg_decoder::PixelFormat::L8 => {
            DynamicImage::ImageLuma8(GrayImage::from_raw(sw, sh, pixels)?)
        }
        jpeg_decoder::PixelFormat::L16 | jpeg_decoder::PixelFormat::CMYK32 => return None,
    };
    Some(Decoded {
        pixels,
        size: (w, h),
        orientation,
        icc: decoder.icc_profile(),
    })
}

fn decode_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

fn too_many_pixels(name: &str, w: u64, h: u64) -> String {
    format!(
        "the {name} is {w}x{h} pixels, too large to resize (at most {MAX_DECODE_SIDE} pixels \
         a side); send a smaller image"
    )
}

fn decode(bytes: &[u8], format: ImageFormat, name: &str) -> Result<Decoded, String> {
    // From the header alone, before any decoder allocates by what the header claims.
    let header = imagesize::blob_size(bytes)
        .ok()
        .map(|s| (s.width as u64, s.height as u64));
    if let Some((w, h)) = header {
        if w > u64::from(MAX_DECODE_SIDE) || h > u64::from(MAX_DECODE_SIDE) {
            return Err(too_many_pixels(name, w, h));
        }
    }
    let over_memory = |needed: Option<u64>| {
        let size = header.map_or(String::new(), |(w, h)| format!(" is {w}x{h} pixels:"));
        let needed = needed.map_or("more than".to_string(), |n| {
            format!("{},", human_size(usize::try_from(n).unwrap_or(usize::MAX)))
        });
        format!(
            "the {name}{size} decoding it would take {needed} over the {} allowed for \
             resizing; send a smaller image",
            human_size(MAX_DECODE_BYTES as usize)
        )
    };
    let failed = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => over_memory(None),
        e => format!("the {name} could not be decoded: {e}"),
    };

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decode_limits());
    let mut decoder = reader.into_decoder().map_err(failed)?;
    let (w, h) = decoder.dimensions();
    if w > MAX_DECODE_SIDE || h > MAX_DECODE_SIDE {
        return Err(too_many_pixels(name, w.into(), h.into()));
    }
    let needed = decoder.total_bytes();
    if needed > MAX_DECODE_BYTES {
        return Err(over_memory(Some(needed)));
    }
    // Metadata a decoder can't read is not worth failing the image for.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let pixels = DynamicImage::from_decoder(decoder).map_err(failed)?;
    Ok(Decoded {
        size: (pixels.width(), pixels.height()),
        pixels,
        orientation,
        icc,
    })
}

/// 8-bit pixels in one of the layouts both the resizer and the encoders take.
enum Pixels {
    Gray(GrayImage),
    Rgb(RgbImage),
    Rgba(RgbaImage),
}

impl Pixels {
    /// Other depths and layouts are converted; alpha is kept only if some pixel uses it.
    fn from(image: DynamicImage) -> Self {
        let color = image.color();
        if color.has_alpha() {
            let rgba = image.into_rgba8();
            if rgba.pixels().all(|p| p.0[3] == u8::MAX) {
                Pixels::Rgb(DynamicImage::ImageRgba8(rgba).into_rgb8())
            } else {
                Pixels::Rgba(rgba)
            }
        } else if color.channel_count() == 1 {
            Pixels::Gray(image.into_luma8())
        } else {
            Pixels::Rgb(image.into_rgb8())
        }
    }
}

fn resize(image: DynamicImage, (tw, th): (u32, u32)) -> Result<DynamicImage, String> {
    let (w, h) = (image.width(), image.height());
    let (buf, pixel_type) = match Pixels::from(image) {
        Pixels::Gray(b) => (b.into_raw(), PixelType::U8),
        Pixels::Rgb(b) => (b.into_raw(), PixelType::U8x3),
        Pixels::Rgba(b) => (b.into_raw(), PixelType::U8x4),
    };
    let src = ImageRef::new(w, h, &buf, pixel_type).map_err(|e| format!("resize: {e}"))?;
    let mut dst = Image::new(tw, th, pixel_type);
    // Lanczos3 keeps text and edges sharpest; alpha is premultiplied by default.
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| format!("resize: {e}"))?;
    let out = dst.into_vec();
    let image = match pixel_type {
        PixelType::U8 => GrayImage::from_raw(tw, th, out).map(DynamicImage::ImageLuma8),
        PixelType::U8x3 => RgbImage::from_raw(tw, th, out).map(DynamicImage::ImageRgb8),
        _ => RgbaImage::from_raw(tw, th, out).map(DynamicImage::ImageRgba8),
    };
    image.ok_or_else(|| "resize: the resized buffer has the wrong size".to_string())
}

fn encode(
    image: &DynamicImage,
    source: ImageFormat,
    icc: Option<Vec<u8>>,
) -> Result<(Vec<u8>, &'static str), String> {
    let png = source != ImageFormat::Jpeg && image.color().has_alpha();
    let encoded = if png {
        encode_png(image, icc)
    } else {
        encode_jpeg(image, icc.as_deref())
    };
    let out = encoded.map_err(|e| format!("re-encoding the resized image failed: {e}"))?;
    Ok((out, if png { "image/png" } else { "image/jpeg" }))
}

fn encode_png(image: &DynamicImage, icc: Option<Vec<u8>>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = PngEncoder::new_with_quality(
        &mut out,
        png::CompressionType::Default,
        png::FilterType::Adaptive,
    );
    if let Some(icc) = icc {
        let _ = encoder.set_icc_profile(icc);
    }
    image
        .write_with_encoder(encoder)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// A JPEG at [`JPEG_QUALITY`] by the `jpeg-encoder` crate, with its AVX2 colour conversion
/// and DCT when the CPU has them: several times faster than `image`'s encoder, which was
/// the largest cost of a downscale. Chroma is subsampled 2×2 (4:2:0) as cameras and
/// libjpeg do at this quality, which also makes the file smaller (the crate's default
/// takes each 2×2 block's top-left chroma; libjpeg averages the four).
fn encode_jpeg(image: &DynamicImage, icc: Option<&[u8]>) -> Result<Vec<u8>, String> {
    use jpeg_encoder::{ColorType, Encoder};
    let side = |n: u32| u16::try_from(n).map_err(|_| format!("{n} pixels is too wide for a JPEG"));
    let (w, h) = (side(image.width())?, side(image.height())?);
    let mut out = Vec::new();
    let mut encoder = Encoder::new(&mut out, JPEG_QUALITY);
    if let Some(icc) = icc {
        // A profile too large for JPEG's APP2 segments is left out, as `image` did.
        let _ = encoder.add_icc_profile(icc);
    }
    match image {
        DynamicImage::ImageLuma8(gray) => encoder.encode(gray.as_raw(), w, h, ColorType::Luma),
        DynamicImage::ImageRgb8(rgb) => encoder.encode(rgb.as_raw(), w, h, ColorType::Rgb),
        other => encoder.encode(other.to_rgb8().as_raw(), w, h, ColorType::Rgb),
    }
    .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::image_tokens::{image_tokens, tile_count};
    use image::codecs::jpeg::JpegEncoder;
    use testkit::{jpeg_photo, photo_rgb, png_header_claiming, png_opaque, png_with_alpha};

    const MODELS: &[&str] = &[
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-5",
        "o1",
        "o3",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-5-mini",
        "gpt-5-nano",
        "o4-mini",
        "some-unknown-model",
    ];

    #[test]
    fn worked_examples() {
        assert_eq!(
            target_size("gpt-4o-mini", 2000, 1500, Detail::Low),
            Some((512, 384))
        );
        assert_eq!(
            target_size("gpt-4o-mini", 2000, 1500, Detail::High),
            Some((1024, 768))
        );
        assert_eq!(
            target_size("gpt-4o", 2000, 1500, Detail::Auto),
            Some((1024, 768))
        );
        for detail in Detail::ALL {
            assert_eq!(target_size("gpt-4o", 300, 200, *detail), None);
            assert_eq!(target_size("gpt-4.1-mini", 300, 200, *detail), None);
        }
        // Fit within 2048 first, then the short side to 768.
        assert_eq!(
            target_size("gpt-4o", 4096, 8192, Detail::High),
            Some((768, 1536))
        );
        assert_eq!(
            target_size("gpt-4o", 3000, 100, Detail::High),
            Some((2048, 68))
        );
        // 1024x700 is within every high-detail bound: OpenAI would not resize it.
        assert_eq!(target_size("gpt-4o", 1024, 700, Detail::High), None);
        assert_eq!(
            target_size("gpt-4o", 1024, 700, Detail::Low),
            Some((512, 350))
        );
        assert_eq!(target_size("gpt-4o", 512, 100, Detail::Low), None);
    }

    #[test]
    fn patch_models_shrink_to_the_billed_patch_grid_whatever_the_detail() {
        // 1024x1024 is exactly 1024 patches, under the 1536 cap: untouched.
        assert_eq!(target_size("gpt-4.1-mini", 1024, 1024, Detail::High), None);
        let t = target_size("gpt-4.1-mini", 1800, 2400, Detail::Low).unwrap();
        for detail in Detail::ALL {
            assert_eq!(target_size("gpt-4.1-mini", 1800, 2400, *detail), Some(t));
        }
        assert!(raw_patches(t.0, t.1) <= 1452, "{t:?}");
        // The largest such size: one pixel more on the long side needs another patch row.
        assert!(raw_patches(t.0, t.1 + 1) > 1452 || raw_patches(t.0 + 1, t.1 + 1) > 1452);
        assert_eq!(
            image_tokens("gpt-4.1-mini", t.0, t.1, Detail::High),
            image_tokens("gpt-4.1-mini", 1800, 2400, Detail::High)
        );
    }

    fn sizes() -> Vec<(u32, u32)> {
        let sides = [
            1, 2, 31, 32, 33, 100, 300, 511, 512, 513, 767, 768, 769, 1000, 1023, 1024, 1025, 1500,
            1800, 2000, 2047, 2048, 2049, 2400, 3000, 4032, 4096, 6000, 8192, 12_000, 50_000,
        ];
        let mut out = Vec::new();
        for &w in &sides {
            for &h in &sides {
                out.push((w, h));
            }
        }
        // Sizes from a cheap generator, to hit shapes the list above misses.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push(((x % 9000) as u32 + 1, ((x >> 20) % 9000) as u32 + 1));
        }
        out
    }

    #[test]
    fn tokens_billed_never_rise_and_stay_equal_for_tile_models() {
        for &model in MODELS {
            let tile = matches!(formula_for(model), VisionFormula::Tile { .. });
            for (w, h) in sizes() {
                for &detail in Detail::ALL {
                    let before = image_tokens(model, w, h, detail);
                    let Some((nw, nh)) = target_size(model, w, h, detail) else {
                        continue;
                    };
                    let ctx = format!("{model} {w}x{h} {detail:?} -> {nw}x{nh}");
                    assert!(nw <= w && nh <= h && nw >= 1 && nh >= 1, "{ctx}");
                    assert!((nw, nh) != (w, h), "{ctx}");
                    let after = image_tokens(model, nw, nh, detail);
                    assert!(after <= before, "{ctx}: {after} > {before}");
                    if tile {
                        assert_eq!(after, before, "{ctx}");
                        if detail != Detail::Low {
                            assert_eq!(tile_count(nw, nh), tile_count(w, h), "{ctx}");
                            // OpenAI has nothing left to resize: the target is a fixed point.
                            assert_eq!(target_size(model, nw, nh, detail), None, "{ctx}");
                        } else {
                            assert!(nw.max(nh) <= 512, "{ctx}");
                        }
                    } else {
                        assert!(raw_patches(nw, nh) <= 1536, "{ctx}");
                        assert_eq!(target_size(model, nw, nh, detail), None, "{ctx}");
                    }
                }
            }
        }
    }

    #[test]
    fn patch_targets_keep_the_tokens_for_ordinary_photos() {
        // Equality is the goal; only extreme shapes may lose a partial patch row.
        for &model in &["gpt-4.1-mini", "gpt-5-nano", "o4-mini"] {
            for (w, h) in [(4032, 3024), (3024, 4032), (2000, 1500), (6000, 4000)] {
                let (nw, nh) = target_size(model, w, h, Detail::Auto).unwrap();
                assert_eq!(
                    image_tokens(model, nw, nh, Detail::Auto),
                    image_tokens(model, w, h, Detail::Auto),
                    "{model} {w}x{h} -> {nw}x{nh}"
                );
            }
        }
    }

    #[test]
    fn aspect_ratio_is_kept() {
        for (w, h) in [(4032, 3024), (1000, 3000), (8000, 1000)] {
            for &model in MODELS {
                for &detail in Detail::ALL {
                    if let Some((nw, nh)) = target_size(model, w, h, detail) {
                        let before = f64::from(w) / f64::from(h);
                        let after = f64::from(nw) / f64::from(nh);
                        assert!(
                            (after / before - 1.0).abs() < 0.01,
                            "{model} {w}x{h} {detail:?} -> {nw}x{nh}"
                        );
                    }
                }
            }
        }
    }

    fn decoded(bytes: &[u8]) -> DynamicImage {
        image::load_from_memory(bytes).unwrap()
    }

    #[test]
    fn a_jpeg_photo_becomes_a_smaller_jpeg_of_the_target_size() {
        let input = jpeg_photo(1600, 1200);
        let target = DownscaleTarget::new("gpt-4o-mini", Detail::Low);
        let out = downscale_for(&input, &target).unwrap().unwrap();
        assert_eq!((out.width, out.height), (512, 384));
        assert_eq!(out.mime, "image/jpeg");
        assert!(out.bytes.len() < input.len() / 4, "{}", out.bytes.len());
        assert!(out.bytes.starts_with(&[0xFF, 0xD8, 0xFF]));
        let img = decoded(&out.bytes);
        assert_eq!((img.width(), img.height()), (512, 384));

        let high = DownscaleTarget::new("gpt-4o-mini", Detail::High);
        let out = downscale_for(&input, &high).unwrap().unwrap();
        assert_eq!((out.width, out.height), (1024, 768));
    }

    #[test]
    fn a_grey_jpeg_stays_grey_and_an_icc_profile_is_kept() {
        let profile = b"not a real profile, but bytes the JPEG must carry".to_vec();
        let gray = GrayImage::from_fn(1200, 900, |x, y| image::Luma([((x + y) % 256) as u8]));
        let mut input = Vec::new();
        let mut enc = JpegEncoder::new_with_quality(&mut input, 90);
        enc.set_icc_profile(profile.clone()).unwrap();
        enc.write_image(gray.as_raw(), 1200, 900, image::ExtendedColorType::L8)
            .unwrap();
        let out = downscale(&input, (400, 300)).unwrap().unwrap();
        assert_eq!((out.width, out.height, out.mime), (400, 300, "image/jpeg"));
        let mut decoder = jpeg_decoder::Decoder::new(out.bytes.as_slice());
        decoder.read_info().unwrap();
        let info = decoder.info().unwrap();
        assert_eq!(info.pixel_format, jpeg_decoder::PixelFormat::L8);
        assert_eq!(decoder.icc_profile(), Some(profile));
    }

    #[test]
    fn the_resized_pixels_are_the_picture_scaled() {
        // Left half black, right half white: the halves must survive the resize.
        let img = RgbImage::from_fn(1200, 800, |x, _| {
            if x < 600 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let mut input = Vec::new();
        JpegEncoder::new_with_quality(&mut input, 95)
            .write_image(img.as_raw(), 1200, 800, image::ExtendedColorType::Rgb8)
            .unwrap();
        let out = downscale(&input, (300, 200)).unwrap().unwrap();
        let small = decoded(&out.bytes).into_rgb8();
        assert!(small.get_pixel(20, 100).0.iter().all(|&c| c < 30));
        assert!(small.get_pixel(280, 100).0.iter().all(|&c| c > 225));
    }

    #[test]
    fn a_png_with_transparency_stays_a_png_with_alpha() {
        let input = png_with_alpha(1600, 1200);
        let out = downscale(&input, (512, 384)).unwrap().unwrap();
        assert_eq!(out.mime, "image/png");
        assert_eq!((out.width, out.height), (512, 384));
        assert!(out.bytes.len() < input.len());
        let img = decoded(&out.bytes).into_rgba8();
        assert_eq!((img.width(), img.height()), (512, 384));
        assert_eq!(img.get_pixel(10, 10).0[3], 0);
        assert_eq!(img.get_pixel(500, 10).0[3], 255);
    }

    #[test]
    fn an_opaque_png_becomes_a_jpeg() {
        let input = png_opaque(1600, 1200);
        let out = downscale(&input, (512, 384)).unwrap().unwrap();
        assert_eq!(out.mime, "image/jpeg");
        assert!(out.bytes.len() < input.len());
    }

    #[test]
    fn a_small_image_is_left_alone() {
        let input = jpeg_photo(300, 200);
        let target = DownscaleTarget::new("gpt-4o", Detail::High);
        assert_eq!(downscale_for(&input, &target), Ok(None));
        assert_eq!(downscale(&input, (300, 200)), Ok(None));
        assert_eq!(downscale(&input, (600, 400)), Ok(None));
    }

    #[test]
    fn a_result_no_smaller_than_the_input_keeps_the_original() {
        // Flat grey compresses to almost nothing as a PNG; as a JPEG it is bigger.
        let img = RgbImage::from_pixel(1000, 1000, image::Rgb([128, 128, 128]));
        let mut input = Vec::new();
        PngEncoder::new_with_quality(
            &mut input,
            png::CompressionType::Best,
            png::FilterType::Adaptive,
        )
        .write_image(img.as_raw(), 1000, 1000, image::ExtendedColorType::Rgb8)
        .unwrap();
        assert_eq!(downscale(&input, (999, 999)), Ok(None));
    }

    /// A `w`x`h` JPEG whose EXIF says "rotate 90°": it is shown `h` wide, `w` tall.
    fn rotated_jpeg(w: u32, h: u32) -> Vec<u8> {
        let mut jpeg = Vec::new();
        let mut enc = JpegEncoder::new_with_quality(&mut jpeg, 90);
        let exif: Vec<u8> = [
            b"MM\0\x2a\0\0\0\x08".as_slice(),
            &[0, 1],                                     // one entry
            &[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0], // Orientation = 6
            &[0, 0, 0, 0],
        ]
        .concat();
        enc.set_exif_metadata(exif).unwrap();
        enc.write_image(
            photo_rgb(w, h).as_raw(),
            w,
            h,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
        jpeg
    }

    #[test]
    fn exif_rotation_is_applied_and_the_displayed_sides_are_targeted() {
        let jpeg = rotated_jpeg(2000, 1000);
        let out = downscale_for(&jpeg, &DownscaleTarget::new("gpt-4o", Detail::Low))
            .unwrap()
            .unwrap();
        assert_eq!((out.width, out.height), (256, 512));
        let img = decoded(&out.bytes);
        assert_eq!((img.width(), img.height()), (256, 512));
    }

    #[test]
    fn a_jpeg_is_decoded_through_its_dct_at_the_smallest_scale_that_covers_the_target() {
        let input = jpeg_photo(1080, 1350);
        let at = |target: (u32, u32)| {
            decode_jpeg_scaled(&input, &|_, _| Some(target)).map(|d| {
                assert_eq!(d.size, (1080, 1350));
                (d.pixels.width(), d.pixels.height())
            })
        };
        assert_eq!(at((409, 512)), Some((540, 675)), "1/2");
        assert_eq!(at((200, 250)), Some((270, 338)), "1/4");
        assert_eq!(at((100, 120)), Some((135, 169)), "1/8");
        assert_eq!(at((600, 750)), Some((1080, 1350)), "whole");
        assert_eq!(at((1200, 1500)), None, "would enlarge");
        // The EXIF rotation turns the target: 256x512 shown is 512x256 stored.
        let rotated = rotated_jpeg(2000, 1000);
        let d = decode_jpeg_scaled(&rotated, &|w, h| {
            assert_eq!((w, h), (1000, 2000), "the displayed sides");
            Some((256, 512))
        })
        .unwrap();
        assert_eq!((d.pixels.width(), d.pixels.height()), (1000, 500));
        assert_eq!(d.orientation, Orientation::Rotate90);
    }

    #[test]
    fn the_dct_scaled_jpeg_looks_like_the_fully_decoded_one() {
        let input = jpeg_photo(1080, 1350);
        let out = downscale(&input, (409, 512)).unwrap().unwrap();
        let full = decode(&input, ImageFormat::Jpeg, "JPEG").unwrap();
        let reference = resize(full.pixels, (409, 512)).unwrap().into_rgb8();
        let ours = decoded(&out.bytes).into_rgb8();
        assert_eq!(ours.dimensions(), reference.dimensions());
        let diff: u64 = ours
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| u64::from(a.abs_diff(*b)))
            .sum();
        let mean = diff as f64 / ours.as_raw().len() as f64;
        assert!(mean < 4.0, "mean difference {mean:.2} per channel");
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_decoding() {
        let bomb = png_header_claiming(100_000, 100_000);
        let err = downscale(&bomb, (512, 512)).unwrap_err();
        assert_eq!(
            err,
            "the PNG is 100000x100000 pixels, too large to resize (at most 16384 pixels a \
             side); send a smaller image"
        );
        let target = DownscaleTarget::new("gpt-4o", Detail::Low);
        assert_eq!(downscale_for(&bomb, &target).unwrap_err(), err);
    }

    #[test]
    fn an_image_over_the_memory_limit_is_refused() {
        // Within the side limit, but 15000x15000 RGBA is 858 MiB decoded.
        let bomb = png_header_claiming(15_000, 15_000);
        let err = downscale(&bomb, (512, 512)).unwrap_err();
        assert!(
            err.starts_with("the PNG is 15000x15000 pixels: decoding it would take")
                && err.contains("over the 512 MiB allowed for resizing"),
            "{err}"
        );
    }

    #[test]
    fn a_broken_image_gives_a_decoding_error() {
        let mut input = jpeg_photo(1000, 800);
        input.truncate(600);
        let err = downscale(&input, (500, 400)).unwrap_err();
        assert!(err.starts_with("the JPEG could not be decoded: "), "{err}");
        let err = downscale(b"plain text, not an image", (5, 5)).unwrap_err();
        assert_eq!(err, "not a PNG, JPEG, WEBP or GIF image");
    }
}
