//! How many input tokens an image costs, by each model family's vision formula (tiles of
//! 512 px or 32 px patches). Used for estimates only: money comes from reported usage.

use super::resolve_family;
use crate::domain::Detail;

/// A model family's way of turning an image into tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VisionFormula {
    /// `base` tokens, plus `tile` per 512 px tile of the resized image at high detail.
    Tile { base: u32, tile: u32 },
    /// One token per 32 px patch times `multiplier`, at most `max_patches` patches.
    Patch { multiplier: f64, max_patches: u32 },
}

const GPT_4O: VisionFormula = VisionFormula::Tile {
    base: 85,
    tile: 170,
};

const PATCH_CAP: u32 = 1536;

const fn patch(multiplier: f64) -> VisionFormula {
    VisionFormula::Patch {
        multiplier,
        max_patches: PATCH_CAP,
    }
}

const FAMILIES: &[(&str, VisionFormula)] = &[
    ("gpt-4o", GPT_4O),
    ("gpt-4.1", GPT_4O),
    (
        "gpt-4o-mini",
        VisionFormula::Tile {
            base: 2833,
            tile: 5667,
        },
    ),
    (
        "gpt-5",
        VisionFormula::Tile {
            base: 70,
            tile: 140,
        },
    ),
    (
        "o1",
        VisionFormula::Tile {
            base: 75,
            tile: 150,
        },
    ),
    (
        "o3",
        VisionFormula::Tile {
            base: 75,
            tile: 150,
        },
    ),
    ("gpt-4.1-mini", patch(1.62)),
    ("gpt-4.1-nano", patch(2.46)),
    ("gpt-5-mini", patch(1.62)),
    ("gpt-5-nano", patch(2.46)),
    ("o4-mini", patch(1.72)),
];

/// The formula of `model`'s family (dated snapshots resolve to their family); an unknown
/// model gets gpt-4o's tile formula.
pub fn formula_for(model: &str) -> VisionFormula {
    resolve_family(model, FAMILIES.iter().map(|(name, _)| *name))
        .and_then(|family| FAMILIES.iter().find(|(name, _)| *name == family))
        .map_or(GPT_4O, |(_, formula)| *formula)
}

/// Input tokens of one `width`×`height` image sent to `model` at `detail`.
pub fn image_tokens(model: &str, width: u32, height: u32, detail: Detail) -> u32 {
    formula_for(model).tokens(width, height, detail)
}

impl VisionFormula {
    /// Input tokens of one `width`×`height` image at `detail`.
    pub fn tokens(&self, width: u32, height: u32, detail: Detail) -> u32 {
        match *self {
            VisionFormula::Tile { base, tile } => match detail {
                Detail::Low => base,
                Detail::High | Detail::Auto => {
                    let total = u64::from(base) + u64::from(tile) * tile_count(width, height);
                    saturate(total)
                }
            },
            // Patch models were observed to ignore `detail`.
            VisionFormula::Patch {
                multiplier,
                max_patches,
            } => {
                let patches = patch_count(width, height, max_patches);
                // The multiplier has two decimals: as an integer percentage the ceiling is exact.
                let percent = (multiplier * 100.0).round().max(0.0) as u64;
                saturate((patches * percent).div_ceil(100))
            }
        }
    }
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// 512 px tiles after fitting within 2048×2048 and then scaling the shortest side down to
/// 768, both downscale only. Sizes are truncated to whole pixels after each step.
pub fn tile_count(width: u32, height: u32) -> u64 {
    let (mut w, mut h) = (u64::from(width), u64::from(height));
    let long = w.max(h);
    if long > 2048 {
        w = (w * 2048 / long).max(1);
        h = (h * 2048 / long).max(1);
    }
    let short = w.min(h);
    if short > 768 {
        w = (w * 768 / short).max(1);
        h = (h * 768 / short).max(1);
    }
    w.div_ceil(512) * h.div_ceil(512)
}

/// 32 px patches, following OpenAI's documented procedure when the image has more than
/// `cap`: shrink by sqrt(32²·cap/(w·h)), then, if the rounded-up patch grid still exceeds the
/// cap, shrink again so the width is a whole number of patches.
pub fn patch_count(width: u32, height: u32, cap: u32) -> u64 {
    let cap = u64::from(cap);
    let raw = u64::from(width).div_ceil(32) * u64::from(height).div_ceil(32);
    if raw <= cap {
        return raw;
    }
    let (w, h) = (f64::from(width), f64::from(height));
    let shrink = (32.0 * 32.0 * cap as f64 / (w * h)).sqrt();
    let (mut across, mut down) = (w * shrink / 32.0, h * shrink / 32.0);
    let mut patches = ceil_tolerant(across) * ceil_tolerant(down);
    // A width below one patch has no whole number to snap to; the cap below bounds it.
    if patches > cap && across.floor() >= 1.0 {
        let snap = across.floor() / across;
        across *= snap;
        down *= snap;
        patches = ceil_tolerant(across) * ceil_tolerant(down);
    }
    patches.min(cap)
}

/// Ceiling that treats float noise around a whole number as that number: after the snap the
/// width is meant to be exactly whole (33.000000001 patches are 33, not 34).
fn ceil_tolerant(x: f64) -> u64 {
    let nearest = x.round();
    let whole = if (x - nearest).abs() < 1e-6 {
        nearest
    } else {
        x.ceil()
    };
    whole.max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt_4o_worked_examples() {
        assert_eq!(image_tokens("gpt-4o", 1024, 1024, Detail::High), 765);
        assert_eq!(image_tokens("gpt-4o", 2048, 4096, Detail::High), 1105);
        for (w, h) in [(1, 1), (1024, 1024), (4096, 8192), (300, 20)] {
            assert_eq!(image_tokens("gpt-4o", w, h, Detail::Low), 85);
        }
        // A small image is one tile.
        assert_eq!(image_tokens("gpt-4o", 500, 300, Detail::High), 85 + 170);
    }

    #[test]
    fn gpt_4o_mini_worked_examples() {
        assert_eq!(image_tokens("gpt-4o-mini", 4000, 3000, Detail::Low), 2833);
        assert_eq!(
            image_tokens("gpt-4o-mini", 1024, 1024, Detail::High),
            2833 + 4 * 5667
        );
        assert_eq!(
            image_tokens("gpt-4o-mini-2024-07-18", 1024, 1024, Detail::High),
            2833 + 4 * 5667
        );
    }

    #[test]
    fn auto_is_high_for_tile_models() {
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-5",
            "o1",
            "o3",
            "unknown",
        ] {
            for (w, h) in [(1024, 1024), (2048, 4096), (640, 480), (3000, 100)] {
                assert_eq!(
                    image_tokens(model, w, h, Detail::Auto),
                    image_tokens(model, w, h, Detail::High),
                    "{model} {w}x{h}"
                );
            }
        }
    }

    #[test]
    fn family_table() {
        assert_eq!(formula_for("gpt-4.1-2025-04-14"), GPT_4O);
        assert_eq!(
            formula_for("gpt-5-2025-08-07"),
            VisionFormula::Tile {
                base: 70,
                tile: 140
            }
        );
        assert_eq!(
            formula_for("o3-2025-04-16"),
            VisionFormula::Tile {
                base: 75,
                tile: 150
            }
        );
        assert_eq!(
            formula_for("o1"),
            VisionFormula::Tile {
                base: 75,
                tile: 150
            }
        );
        assert_eq!(formula_for("gpt-4.1-mini-2025-04-14"), patch(1.62));
        assert_eq!(formula_for("gpt-4.1-nano"), patch(2.46));
        assert_eq!(formula_for("gpt-5-mini-2025-08-07"), patch(1.62));
        assert_eq!(formula_for("gpt-5-nano"), patch(2.46));
        assert_eq!(formula_for("o4-mini-2025-04-16"), patch(1.72));
        assert_eq!(formula_for("something-else"), GPT_4O);
        assert_eq!(
            image_tokens("gpt-5", 1024, 1024, Detail::High),
            70 + 4 * 140
        );
        assert_eq!(image_tokens("o3", 1024, 1024, Detail::Low), 75);
    }

    #[test]
    fn patch_worked_examples() {
        assert_eq!(patch_count(1024, 1024, 1536), 1024);
        assert_eq!(patch_count(1800, 2400, 1536), 1452);
        // The documented procedure snaps the width only, so a landscape image is not the
        // mirror of its portrait: 45.26×33.94 → 45×33.75 → 45×34 patches.
        assert_eq!(patch_count(2400, 1800, 1536), 1530);
        // 30.36×50.60 snaps to 30×50 patches, computed as 50.00000000000001: float noise
        // must not round it up to 51.
        assert_eq!(patch_count(1800, 3000, 1536), 1500);
        // 1282×1923 shrinks to exactly 32×48 = 1,536 patches (1282·1536 = 1923·1024), the
        // cap: no second shrink. In floats the width is 31.999…, whose floor would snap it
        // to 31 patches across (1,457 in all) were an exact fit shrunk again.
        assert_eq!(patch_count(1282, 1923, 1536), 1536);
        assert_eq!(image_tokens("gpt-4.1-mini", 1800, 2400, Detail::High), 2353);
        assert_eq!(patch_count(128, 64, 1536), 8);
        assert_eq!(image_tokens("gpt-4.1-mini", 128, 64, Detail::Auto), 13);
        // ceil(1024 × 1.62) = ceil(1658.88)
        assert_eq!(image_tokens("gpt-4.1-mini", 1024, 1024, Detail::High), 1659);
        // ceil(1024 × 2.46) = ceil(2519.04)
        assert_eq!(image_tokens("gpt-5-nano", 1024, 1024, Detail::High), 2520);
        // ceil(8 × 1.72) = ceil(13.76)
        assert_eq!(image_tokens("o4-mini", 128, 64, Detail::High), 14);
    }

    #[test]
    fn patch_models_ignore_detail() {
        for detail in Detail::ALL {
            assert_eq!(image_tokens("gpt-5-mini", 1800, 2400, *detail), 2353);
        }
    }

    #[test]
    fn patches_never_exceed_the_cap() {
        for (w, h) in [
            (4096, 4096),
            (10_000, 10),
            (10, 100_000),
            (1, u32::MAX),
            (u32::MAX, u32::MAX),
            (1537 * 32, 32),
            (3000, 2000),
        ] {
            let p = patch_count(w, h, 1536);
            assert!(p <= 1536, "{w}x{h}: {p}");
            assert!(p > 0, "{w}x{h}: {p}");
        }
    }

    #[test]
    fn the_short_side_scales_down_to_768_with_the_long_side_in_proportion() {
        // 1600×1200 → 1024×768: 2×2 tiles. Both sides scale by 768/1200; were the long one
        // left as it is, 1600 px would be 4 tiles across (8 in all).
        assert_eq!(tile_count(1600, 1200), 4);
        assert_eq!(tile_count(1200, 1600), 4);
        // 1100×1100 → 768×768: 4 tiles, not the 9 of 1100 px sides.
        assert_eq!(tile_count(1100, 1100), 4);
        // 3000×1600 fits 2048 first (2048×1092), then 1440×768: 3×2 tiles.
        assert_eq!(tile_count(3000, 1600), 6);
    }

    #[test]
    fn tiles_stay_bounded_for_extreme_shapes() {
        for (w, h) in [(1, 100_000), (100_000, 1), (u32::MAX, u32::MAX), (0, 0)] {
            assert!(tile_count(w, h) <= 8, "{w}x{h}");
        }
        assert_eq!(tile_count(0, 0), 0);
    }
}
