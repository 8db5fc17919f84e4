//! Image input tokens: OpenAI's per-family formulas and reading dimensions from data URLs.

use base64::Engine;

/// How a model family prices one image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ImageCost {
    /// 512-px tiles after scaling to fit 2048² and then a 768-px shortest side.
    Tile { base: u64, tile: u64 },
    /// 32-px patches, capped at 1,536, times a multiplier; `detail` is ignored.
    Patch { multiplier: f64 },
}

/// openai-sim's own image-token table (family prefix → cost; the longest matching prefix
/// wins, unknown models price as gpt-4o). It implements the two formulas of OpenAI's vision
/// guide ("Calculating costs"): *tile* models scale to fit 2048×2048, then to a 768-px
/// shortest side, and cost `base + tile × ⌈w/512⌉·⌈h/512⌉` (`detail: low` = `base`; the
/// guide's worked examples: 1024² → 765, 2048×4096 → 1105 on gpt-4o); *patch* models count
/// 32-px patches capped at 1,536 (two-step shrink) times a per-model multiplier (1800×2400 →
/// 1452 patches → 2353 on gpt-4.1-mini). The `image_token_factor` knob multiplies the result
/// for "another reading" of the same formulas.
pub const FAMILIES: &[(&str, ImageCost)] = &[
    (
        "gpt-4o",
        ImageCost::Tile {
            base: 85,
            tile: 170,
        },
    ),
    (
        "gpt-4o-mini",
        ImageCost::Tile {
            base: 2833,
            tile: 5667,
        },
    ),
    (
        "gpt-4.1",
        ImageCost::Tile {
            base: 85,
            tile: 170,
        },
    ),
    ("gpt-4.1-mini", ImageCost::Patch { multiplier: 1.62 }),
    ("gpt-4.1-nano", ImageCost::Patch { multiplier: 2.46 }),
    (
        "gpt-5",
        ImageCost::Tile {
            base: 70,
            tile: 140,
        },
    ),
    ("gpt-5-mini", ImageCost::Patch { multiplier: 1.62 }),
    ("gpt-5-nano", ImageCost::Patch { multiplier: 2.46 }),
    ("o4-mini", ImageCost::Patch { multiplier: 1.72 }),
    // The vision guide prices the o1/o3 reasoning models with their own tile numbers.
    (
        "o1",
        ImageCost::Tile {
            base: 75,
            tile: 150,
        },
    ),
    (
        "o3",
        ImageCost::Tile {
            base: 75,
            tile: 150,
        },
    ),
];

const PATCH: f64 = 32.0;
const MAX_PATCHES: f64 = 1536.0;
/// Float noise must not push an exact multiple of 32 or 512 into the next cell.
const EPS: f64 = 1e-9;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    Low,
    High,
    Auto,
}

impl Detail {
    pub fn parse(s: Option<&str>) -> Option<Detail> {
        match s {
            None | Some("auto") => Some(Detail::Auto),
            Some("low") => Some(Detail::Low),
            Some("high") => Some(Detail::High),
            Some(_) => None,
        }
    }
}

pub fn cost_for(model: &str) -> ImageCost {
    FAMILIES
        .iter()
        .filter(|(prefix, _)| model.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, cost)| *cost)
        .unwrap_or(ImageCost::Tile {
            base: 85,
            tile: 170,
        })
}

/// Tokens one image of `width`×`height` costs on `model`.
pub fn image_tokens(model: &str, width: u32, height: u32, detail: Detail) -> u64 {
    match cost_for(model) {
        ImageCost::Tile { base, tile } => match detail {
            Detail::Low => base,
            Detail::High | Detail::Auto => base + tile * tile_count(width, height),
        },
        ImageCost::Patch { multiplier } => {
            (patch_count(width, height) as f64 * multiplier - EPS).ceil() as u64
        }
    }
}

fn ceil_div(x: f64, by: f64) -> u64 {
    (x / by - EPS).ceil().max(0.0) as u64
}

/// 512-px tiles of a high-detail image.
pub fn tile_count(width: u32, height: u32) -> u64 {
    let (mut w, mut h) = (width as f64, height as f64);
    if w > 2048.0 || h > 2048.0 {
        let r = 2048.0 / w.max(h);
        w *= r;
        h *= r;
    }
    if w.min(h) > 768.0 {
        let r = 768.0 / w.min(h);
        w *= r;
        h *= r;
    }
    ceil_div(w, 512.0) * ceil_div(h, 512.0)
}

/// 32-px patches, after OpenAI's two-step shrink when the image has more than 1,536.
pub fn patch_count(width: u32, height: u32) -> u64 {
    let (w, h) = (width as f64, height as f64);
    let raw = ceil_div(w, PATCH) * ceil_div(h, PATCH);
    if raw as f64 <= MAX_PATCHES {
        return raw;
    }
    let shrink = (PATCH * PATCH * MAX_PATCHES / (w * h)).sqrt();
    let (mut w, mut h) = (w * shrink, h * shrink);
    let mut patches = ceil_div(w, PATCH) * ceil_div(h, PATCH);
    // Fit a whole number of patches across the width, one column less each round if needed.
    let mut cols = (w / PATCH + EPS).floor();
    while patches as f64 > MAX_PATCHES && cols >= 1.0 {
        let r = cols / (w / PATCH);
        w *= r;
        h *= r;
        patches = ceil_div(w, PATCH) * ceil_div(h, PATCH);
        cols -= 1.0;
    }
    patches
}

/// Why an image's size could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageUrlError {
    NotDataUrl,
    BadDataUrl,
    UnreadableImage,
}

/// Width and height of a `data:image/...;base64,` URL, read from the header only.
pub fn data_url_dimensions(url: &str) -> Result<(u32, u32), ImageUrlError> {
    let rest = url.strip_prefix("data:").ok_or(ImageUrlError::NotDataUrl)?;
    let (header, data) = rest.split_once(',').ok_or(ImageUrlError::BadDataUrl)?;
    if !header.ends_with(";base64") {
        return Err(ImageUrlError::BadDataUrl);
    }
    let engine = base64::engine::general_purpose::STANDARD;
    // Headers sit at the front: decode a prefix first, the whole image only if it is not enough.
    let prefix_len = (data.len().min(16 * 1024) / 4) * 4;
    if prefix_len < data.len() {
        if let Ok(bytes) = engine.decode(&data[..prefix_len]) {
            if let Ok(size) = imagesize::blob_size(&bytes) {
                return to_u32(size);
            }
        }
    }
    let bytes = engine
        .decode(data.trim_end())
        .map_err(|_| ImageUrlError::BadDataUrl)?;
    to_u32(imagesize::blob_size(&bytes).map_err(|_| ImageUrlError::UnreadableImage)?)
}

fn to_u32(size: imagesize::ImageSize) -> Result<(u32, u32), ImageUrlError> {
    let w = u32::try_from(size.width).map_err(|_| ImageUrlError::UnreadableImage)?;
    let h = u32::try_from(size.height).map_err(|_| ImageUrlError::UnreadableImage)?;
    if w == 0 || h == 0 {
        return Err(ImageUrlError::UnreadableImage);
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_worked_examples() {
        assert_eq!(image_tokens("gpt-4o", 1024, 1024, Detail::High), 765);
        assert_eq!(image_tokens("gpt-4o", 2048, 4096, Detail::High), 1105);
        assert_eq!(image_tokens("gpt-4o", 2048, 4096, Detail::Auto), 1105);
        assert_eq!(image_tokens("gpt-4o-mini", 4000, 3000, Detail::Low), 2833);
        assert_eq!(
            image_tokens("gpt-4o-mini-2024-07-18", 512, 512, Detail::High),
            8500
        );
        assert_eq!(
            image_tokens("gpt-5", 1024, 1024, Detail::High),
            70 + 140 * 4
        );
        assert_eq!(image_tokens("unknown-model", 1024, 1024, Detail::High), 765);
    }

    #[test]
    fn patch_worked_examples() {
        assert_eq!(patch_count(1024, 1024), 1024);
        assert_eq!(patch_count(1800, 2400), 1452);
        assert_eq!(image_tokens("gpt-4.1-mini", 1800, 2400, Detail::Low), 2353);
        assert_eq!(image_tokens("gpt-4.1-mini", 1024, 1024, Detail::High), 1659);
        assert_eq!(image_tokens("gpt-5-nano", 1024, 1024, Detail::Auto), 2520);
    }

    #[test]
    fn patches_never_exceed_the_cap() {
        for (w, h) in [
            (4000, 3000),
            (10000, 100),
            (100, 10000),
            (1537 * 32, 32),
            (3333, 2222),
        ] {
            let p = patch_count(w, h);
            assert!(p <= 1536, "{w}x{h} gave {p}");
            assert!(p > 0);
        }
    }

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(
            cost_for("gpt-4.1-mini-2025-04-14"),
            ImageCost::Patch { multiplier: 1.62 }
        );
        assert_eq!(
            cost_for("gpt-4.1-2025-04-14"),
            ImageCost::Tile {
                base: 85,
                tile: 170
            }
        );
        assert_eq!(
            cost_for("gpt-4o-mini"),
            ImageCost::Tile {
                base: 2833,
                tile: 5667
            }
        );
    }

    #[test]
    fn reads_png_header_from_data_url() {
        let url = testkit::png_data_url(&testkit::png_header(1800, 2400));
        assert_eq!(data_url_dimensions(&url), Ok((1800, 2400)));
        assert_eq!(
            data_url_dimensions("https://x/y.png"),
            Err(ImageUrlError::NotDataUrl)
        );
        assert_eq!(
            data_url_dimensions("data:image/png;base64,AAAA"),
            Err(ImageUrlError::UnreadableImage)
        );
    }
}
