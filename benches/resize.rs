//! Throughput of inline-image downscaling and what it saves in a batch file: synthetic
//! 2000×1500 photos (JPEG q90) downscaled for gpt-4o-mini at detail low and high.
//! Prints figures; asserts nothing about time. `BENCH_IMAGES` sets the count (default 200).
//!
//! Run: `cargo bench --bench resize` (or `BENCH_IMAGES=50 cargo bench --bench resize`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use batchlens::domain::Detail;
use batchlens::intake::resize::{downscale_for, DownscaleTarget};
use batchlens::intake::{check_items, IntakeLimits, ItemInput};
use image::codecs::jpeg::JpegEncoder;

mod common;

const WIDTH: u32 = 2000;
const HEIGHT: u32 = 1500;
const MODEL: &str = "gpt-4o-mini";
/// The planner's cap on one batch input file (`batch.max_file_bytes`).
const FILE_BYTES: u64 = 190_000_000;

fn photo(seed: u64) -> Vec<u8> {
    common::photo_jpeg(seed, (WIDTH, HEIGHT), 90, 6, 8)
}

fn base64_len(bytes: u64) -> u64 {
    bytes.div_ceil(3) * 4
}

fn per_file(total_bytes: u64, images: usize) -> u64 {
    FILE_BYTES / (base64_len(total_bytes / images as u64)).max(1)
}

fn report(label: &str, images: usize, elapsed: Duration, bytes_in: u64, bytes_out: u64) {
    let secs = elapsed.as_secs_f64();
    println!("{label}");
    println!(
        "  {:.1} images/s, {:.1} ms per image",
        images as f64 / secs,
        secs * 1000.0 / images as f64
    );
    println!(
        "  bytes in {:.1} MB, out {:.1} MB: {:.1}% saved (average {:.0} KB -> {:.0} KB as base64)",
        bytes_in as f64 / 1e6,
        bytes_out as f64 / 1e6,
        100.0 * (1.0 - bytes_out as f64 / bytes_in as f64),
        base64_len(bytes_in / images as u64) as f64 / 1e3,
        base64_len(bytes_out / images as u64) as f64 / 1e3,
    );
    println!(
        "  images per {} MB file (base64 only): {} before, {} after",
        FILE_BYTES / 1_000_000,
        per_file(bytes_in, images),
        per_file(bytes_out, images)
    );
}

fn main() {
    let count: usize = std::env::var("BENCH_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(200);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    let start = Instant::now();
    let photos: Vec<Vec<u8>> = (0..count as u64).map(photo).collect();
    let bytes_in: u64 = photos.iter().map(|p| p.len() as u64).sum();
    println!(
        "generated {count} {WIDTH}x{HEIGHT} JPEG q90 photos ({:.1} MB) in {:.1} s",
        bytes_in as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );

    for detail in [Detail::Low, Detail::High] {
        let target = DownscaleTarget::new(MODEL, detail);
        let mut bytes_out = 0u64;
        let mut size = None;
        let start = Instant::now();
        for p in &photos {
            match downscale_for(p, &target).expect("a generated photo downscales") {
                Some(d) => {
                    bytes_out += d.bytes.len() as u64;
                    size = Some((d.width, d.height));
                }
                None => bytes_out += p.len() as u64,
            }
        }
        let elapsed = start.elapsed();
        let (w, h) = size.unwrap_or((WIDTH, HEIGHT));
        report(
            &format!(
                "downscale, one thread, {MODEL} detail {} -> {w}x{h}",
                detail.as_str()
            ),
            count,
            elapsed,
            bytes_in,
            bytes_out,
        );
    }

    // The whole intake path (base64 decode, sniff, downscale, base64 encode) on every core.
    let inputs: Vec<ItemInput> = photos
        .iter()
        .map(|p| ItemInput {
            image_base64: Some(STANDARD.encode(p)),
            mime_type: Some("image/jpeg".into()),
            ..Default::default()
        })
        .collect();
    let limits = IntakeLimits {
        downscale: Some(DownscaleTarget::new(MODEL, Detail::Low)),
        ..IntakeLimits::default()
    };
    let start = Instant::now();
    let result = check_items(inputs, 0, &HashSet::new(), &limits);
    let elapsed = start.elapsed();
    assert_eq!(result.accepted, count, "{:?}", result.rejected.first());
    let stored: u64 = result.items.iter().map(|i| i.image.len() as u64).sum();
    println!("intake check_items, {threads} threads, detail low");
    println!(
        "  {:.1} images/s, {:.1} ms per image; stored data URLs {:.1} MB",
        count as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / count as f64,
        stored as f64 / 1e6
    );

    // Where the time goes, and the same work with `image` alone (its own Lanczos3 resize).
    let sample = &photos[..count.min(20)];
    let start = Instant::now();
    for p in sample {
        image::load_from_memory(p).expect("decoding a generated photo");
    }
    println!(
        "of which JPEG decoding alone, {} images: {:.1} ms per image",
        sample.len(),
        start.elapsed().as_secs_f64() * 1000.0 / sample.len() as f64
    );
    let start = Instant::now();
    for p in sample {
        let img = image::load_from_memory(p).expect("decoding a generated photo");
        let small = img.resize_exact(1024, 768, image::imageops::FilterType::Lanczos3);
        let mut out = Vec::new();
        small
            .write_with_encoder(JpegEncoder::new_with_quality(&mut out, 85))
            .expect("encoding");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "for comparison, `image` alone (decode, Lanczos3 to 1024x768, encode), {} images: {:.1} ms per image",
        sample.len(),
        secs * 1000.0 / sample.len() as f64
    );
}
