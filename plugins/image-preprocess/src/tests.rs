//! Native unit tests: `cargo test --target x86_64-unknown-linux-gnu -p image-preprocess`
//! (the crate builds for the host too; only the wasm build is shipped).

use super::*;
use image::{GrayImage, Luma, Rgb, RgbImage};

fn plugin(json: &str) -> Result<ImagePreprocess, String> {
    ImagePreprocess::from_config(serde_json::from_str(json).map_err(|e| e.to_string())?)
}

fn encode(image: impl Into<DynamicImage>, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.into().write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn png(image: impl Into<DynamicImage>) -> Vec<u8> {
    encode(image, ImageFormat::Png)
}

const DIGITS: &str = r#"{"width": 8, "height": 8, "resize": "none", "color": "gray",
    "layout": "flat", "scale": 0.004166666666666667}"#;

#[test]
fn digits_path_is_bit_exact() {
    let p = plugin(DIGITS).unwrap();
    // Pixel = digit value * 15, digit values 0..=16.
    let digit = |x: u32, y: u32| ((x * 8 + y) % 17) as u8;
    let img = GrayImage::from_fn(8, 8, |x, y| Luma([digit(x, y) * 15]));
    let t = p.process(&png(img), "image/png").unwrap();
    assert_eq!(t.name, "input");
    assert_eq!(t.shape, vec![1, 64]);
    let values = t.to_f32().unwrap();
    for y in 0..8 {
        for x in 0..8 {
            let v = values[(y * 8 + x) as usize];
            let pixel = digit(x, y) as f32 * 15.0;
            assert_eq!(v.to_bits(), (pixel / 240.0f32).to_bits(), "pixel {pixel}");
            assert_eq!(v, digit(x, y) as f32 / 16.0);
        }
    }
}

#[test]
fn every_8_bit_value_matches_f32_division() {
    let lut = normalization_tables(1.0 / 240.0, &[0.0], &[1.0]);
    for p in 0..=255u32 {
        assert_eq!(
            lut[0][p as usize].to_bits(),
            (p as f32 / 240.0).to_bits(),
            "pixel {p}"
        );
    }
    let lut = normalization_tables(1.0 / 255.0, &[0.0], &[1.0]);
    for p in 0..=255u32 {
        assert_eq!(
            lut[0][p as usize].to_bits(),
            (p as f32 / 255.0).to_bits(),
            "pixel {p}"
        );
    }
}

#[test]
fn gray_from_rgb_keeps_equal_channels() {
    let p = plugin(DIGITS).unwrap();
    let img = RgbImage::from_fn(8, 8, |x, _| {
        let v = (x * 30) as u8;
        Rgb([v, v, v])
    });
    let values = p.process(&png(img), "").unwrap().to_f32().unwrap();
    assert_eq!(values[3], 90.0 / 240.0);
}

#[test]
fn layouts_and_per_channel_normalization() {
    // 2 x 1 image: pixel 0 = (10, 20, 30), pixel 1 = (40, 50, 60).
    let img = RgbImage::from_fn(2, 1, |x, _| {
        if x == 0 {
            Rgb([10, 20, 30])
        } else {
            Rgb([40, 50, 60])
        }
    });
    let bytes = png(img);
    let base = r#""width": 2, "height": 1, "scale": 1, "mean": [0, 10, 20], "std": [1, 2, 5]"#;
    let nchw = plugin(&format!("{{{base}}}"))
        .unwrap()
        .process(&bytes, "")
        .unwrap();
    assert_eq!(nchw.shape, vec![1, 3, 1, 2]);
    assert_eq!(
        nchw.to_f32().unwrap(),
        vec![10.0, 40.0, 5.0, 20.0, 2.0, 8.0]
    );
    let nhwc = plugin(&format!(r#"{{{base}, "layout": "nhwc", "output": "x"}}"#))
        .unwrap()
        .process(&bytes, "")
        .unwrap();
    assert_eq!(nhwc.name, "x");
    assert_eq!(nhwc.shape, vec![1, 1, 2, 3]);
    assert_eq!(
        nhwc.to_f32().unwrap(),
        vec![10.0, 5.0, 2.0, 40.0, 20.0, 8.0]
    );
    let flat = plugin(&format!(r#"{{{base}, "layout": "flat"}}"#))
        .unwrap()
        .process(&bytes, "")
        .unwrap();
    assert_eq!(flat.shape, vec![1, 6]);
    assert_eq!(flat.to_f32().unwrap(), nchw.to_f32().unwrap());
}

#[test]
fn default_scale_is_one_over_255() {
    let p = plugin(r#"{"width": 1, "height": 1}"#).unwrap();
    let values = p
        .process(&png(RgbImage::from_pixel(1, 1, Rgb([255, 0, 51]))), "")
        .unwrap()
        .to_f32()
        .unwrap();
    assert_eq!(values, vec![1.0, 0.0, 0.2]);
}

#[test]
fn resize_modes() {
    let img = GrayImage::from_fn(40, 20, |x, _| {
        Luma([if (15..25).contains(&x) { 200 } else { 0 }])
    });
    let bytes = png(img);
    let exact = plugin(r#"{"width": 10, "height": 10, "color": "gray"}"#)
        .unwrap()
        .process(&bytes, "")
        .unwrap();
    assert_eq!(exact.shape, vec![1, 1, 10, 10]);
    // Shorter side: 40 x 20 -> 20 x 10 (the band 15..25 becomes 7.5..12.5),
    // the center crop keeps columns 5..15: the band lands at 2.5..7.5, i.e.
    // output columns 2..=6 with nearest sampling (column i samples 2i + 1).
    let cropped = plugin(r#"{"width": 10, "height": 10, "color": "gray", "resize": "shorter-side", "filter": "nearest"}"#)
        .unwrap()
        .process(&bytes, "")
        .unwrap();
    assert_eq!(cropped.shape, vec![1, 1, 10, 10]);
    let row: Vec<f32> = cropped.to_f32().unwrap()[..10].to_vec();
    let bright: Vec<usize> = row
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > 0.5)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(bright, vec![2, 3, 4, 5, 6], "{row:?}");
    let none = plugin(r#"{"width": 10, "height": 10, "resize": "none"}"#)
        .unwrap()
        .process(&bytes, "");
    match none {
        Err(ItemError::InvalidInput(m)) => {
            assert!(m.contains("40 x 20") && m.contains("10 x 10"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    for filter in ["nearest", "triangle", "catmull-rom", "lanczos3"] {
        let p = plugin(&format!(
            r#"{{"width": 7, "height": 5, "filter": "{filter}"}}"#
        ))
        .unwrap();
        assert_eq!(p.process(&bytes, "").unwrap().shape, vec![1, 3, 5, 7]);
    }
}

#[test]
fn cover_size_covers_the_target() {
    assert_eq!(cover_size(40, 20, 10, 10), (20, 10));
    assert_eq!(cover_size(20, 40, 10, 10), (10, 20));
    assert_eq!(cover_size(640, 480, 224, 224), (299, 224));
    assert_eq!(cover_size(100, 100, 30, 20), (30, 30));
    assert_eq!(cover_size(3, 1000, 224, 224), (224, 74667));
}

#[test]
fn decodes_jpeg_whatever_the_content_type_says() {
    let jpeg = encode(
        RgbImage::from_pixel(16, 12, Rgb([120, 60, 30])),
        ImageFormat::Jpeg,
    );
    let t = plugin(r#"{"width": 4, "height": 4}"#)
        .unwrap()
        .process(&jpeg, "image/png")
        .unwrap();
    assert_eq!(t.shape, vec![1, 3, 4, 4]);
    let v = t.to_f32().unwrap();
    assert!((v[0] - 120.0 / 255.0).abs() < 0.05, "{}", v[0]);
}

#[test]
fn bad_bytes_are_invalid_and_other_formats_unsupported() {
    let p = plugin(r#"{"width": 4, "height": 4}"#).unwrap();
    let invalid = |r: Result<Tensor, ItemError>| match r {
        Err(ItemError::InvalidInput(m)) => m,
        other => panic!("expected invalid input, got {other:?}"),
    };
    assert!(invalid(p.process(b"", "image/png")).contains("cannot decode image"));
    assert!(invalid(p.process(b"hello world", "")).contains("cannot decode image"));
    let mut truncated = png(GrayImage::new(4, 4));
    truncated.truncate(30);
    assert!(invalid(p.process(&truncated, "")).starts_with("cannot decode image/png: "));
    let jpeg_garbage = [0xff, 0xd8, 0xff, 0, 1, 2, 3];
    assert!(invalid(p.process(&jpeg_garbage, "")).starts_with("cannot decode image/jpeg: "));
    match p.process(b"GIF89a\x01\x00\x01\x00", "image/gif") {
        Err(ItemError::Unsupported(m)) => assert!(m.contains("image/gif"), "{m}"),
        other => panic!("{other:?}"),
    }
    match p.process(b"\x00\x01\x02 unknown", "image/heic") {
        Err(ItemError::Unsupported(m)) => assert!(m.contains("image/heic"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn large_images_are_refused_from_the_header() {
    let p = plugin(r#"{"width": 4, "height": 4, "max_pixels": 5000}"#).unwrap();
    assert!(p.process(&png(GrayImage::new(70, 70)), "").is_ok());
    match p.process(&png(GrayImage::new(80, 80)), "") {
        Err(ItemError::InvalidInput(m)) => {
            assert!(m.contains("6400") && m.contains("max_pixels"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // A PNG header claiming 100000 x 100000 with no pixel data at all.
    let mut bomb = png(GrayImage::new(1, 1));
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    let p = plugin(r#"{"width": 4, "height": 4}"#).unwrap();
    match p.process(&bomb, "") {
        Err(ItemError::InvalidInput(m)) => assert!(m.contains("10000000000 pixels"), "{m}"),
        other => panic!("{other:?}"),
    }
}

pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn config_errors_name_the_key() {
    let err = |json: &str| plugin(json).unwrap_err();
    assert!(err(r#"{"height": 4}"#).contains("width"));
    assert!(err(r#"{"width": 4, "heigth": 4}"#).contains("heigth"));
    assert!(err(r#"{"width": 4, "height": 4, "resize": "fit"}"#).contains("shorter-side"));
    assert!(err(r#"{"width": 4, "height": 4, "mean": [1, 2]}"#).contains("`mean` has 2 values"));
    assert!(err(r#"{"width": 4, "height": 4, "std": [1, 0, 1]}"#).contains("std[1]"));
    assert!(
        err(r#"{"width": 4, "height": 4, "color": "gray", "std": [1, 1, 1]}"#)
            .contains("it needs 1")
    );
    assert!(err(r#"{"width": 0, "height": 4}"#).contains("at least 1"));
    assert!(err(r#"{"width": 4, "height": 4, "scale": 0}"#).contains("scale"));
    assert!(err(r#"{"width": 100, "height": 100, "max_pixels": 9999}"#).contains("max_pixels"));
    assert!(err(r#"{"width": 4, "height": 4, "std": [1e-300]}"#).contains("not a finite f32"));
}

#[test]
fn a_corrupt_image_is_one_short_line() {
    let mut data = png(GrayImage::from_pixel(8, 8, Luma([7])));
    // Damage the IHDR chunk's CRC: the png crate's message prints the chunk
    // type as a Rust struct.
    data[29] ^= 0xff;
    let message = decode(&data, "image/png", 1 << 20).unwrap_err().to_string();
    assert!(
        message.contains("CRC error") && message.contains("IHDR"),
        "{message}"
    );
    assert!(
        !message.contains('{') && !message.contains('\n'),
        "{message}"
    );
    assert!(message.len() < 220, "{message}");
    assert_eq!(
        short_error(&"x ".repeat(500)).chars().count(),
        MAX_ERROR_CHARS + 3
    );
}

/// A smooth RGB photo-like image (gradients), `w` x `h`, as JPEG.
fn smooth_jpeg(w: u32, h: u32) -> Vec<u8> {
    let image = RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x + y) * 127 / (w + h)) as u8,
        ])
    });
    encode(image, ImageFormat::Jpeg)
}

#[test]
fn large_jpegs_decode_at_the_smallest_scale_covering_the_target_on_both_sides() {
    let jpeg = smooth_jpeg(640, 480);
    let size = |target| {
        let image = decode_scaled(&jpeg, "", 40_000_000, target).unwrap();
        (image.width(), image.height())
    };
    assert_eq!(size(None), (640, 480));
    // 224 x 224: 1/2 (320 x 240) covers it, 1/4 (160 x 120) does not.
    assert_eq!(size(Some((224, 224))), (320, 240));
    // Only the width would fit at 1/8 (80 x 60): both sides must.
    assert_eq!(size(Some((64, 100))), (160, 120));
    assert_eq!(size(Some((80, 60))), (80, 60));
    // Nothing below full scale covers it: the full decoder's image.
    assert_eq!(size(Some((400, 300))), (640, 480));
    // The header's size is checked before any scaled decoding.
    match decode_scaled(&jpeg, "", 640 * 480 - 1, Some((80, 60))) {
        Err(ItemError::InvalidInput(m)) => assert!(m.contains("max_pixels"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_draft_decoded_jpeg_gives_what_the_full_decode_gives() {
    let jpeg = smooth_jpeg(1024, 768);
    for resize in ["exact", "shorter-side"] {
        let with = |draft: bool| {
            plugin(&format!(
                r#"{{"width": 96, "height": 64, "resize": "{resize}", "draft": {draft}}}"#
            ))
            .unwrap()
            .process(&jpeg, "image/jpeg")
            .unwrap()
        };
        let (draft, full) = (with(true), with(false));
        assert_eq!(draft.shape, full.shape);
        let (a, b) = (draft.to_f32().unwrap(), full.to_f32().unwrap());
        let mean_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
        let max_diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        // Pixel values are in [0, 1]: a mean difference under 1 % and no
        // pixel off by more than 6 % (JPEG blocks at the edges).
        assert!(
            mean_diff < 0.01 && max_diff < 0.06,
            "{resize}: mean {mean_diff}, max {max_diff}"
        );
    }
}

/// `options.json` names exactly the keys `Config` accepts.
#[test]
fn the_options_file_documents_every_key() {
    sluice_guest::options::check::<Config>(include_str!("../options.json")).unwrap();
}
