//! Property tests (bounded fuzzing on stable) of the decoder, natively:
//! whatever bytes and content type arrive, `process` never panics (a panic
//! would trap the wasm instance), answers a tensor of the declared shape or
//! an item error, and allocates no more than the pixel limit allows.
//!
//! `PROPTEST_CASES=100000 cargo test --target x86_64-unknown-linux-gnu -p image-preprocess props`
//! runs longer (see `docs/fuzzing.md`).

use super::*;
use crate::tests::crc32;
use image::{GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use proptest::prelude::*;
use proptest::sample::Index;
use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;

/// The system allocator, counting this thread's live bytes and their peak,
/// so that a property can bound what one call allocates (proptest runs
/// each test on its own thread).
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn add(bytes: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + bytes;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn sub(bytes: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(bytes)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        unsafe { System.dealloc(ptr, layout) };
        sub(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            sub(layout.size());
            add(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `f()` and the most bytes it had allocated at once (beyond what was live before).
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    (r, PEAK.with(Cell::get) - base)
}

/// Cases: `PROPTEST_CASES` if set (longer runs), else `default`.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The pixel limit of the plugins under test: small, so that the memory
/// bound below is tight.
const MAX_PIXELS: u64 = 1 << 16;

/// A plugin from a small, arbitrary but valid configuration.
fn plugins() -> impl Strategy<Value = ImagePreprocess> {
    (
        1u32..24,
        1u32..24,
        prop_oneof![Just("exact"), Just("shorter-side"), Just("none")],
        prop_oneof![
            Just("nearest"),
            Just("triangle"),
            Just("catmull-rom"),
            Just("lanczos3")
        ],
        prop_oneof![Just("gray"), Just("rgb")],
        prop_oneof![Just("nchw"), Just("nhwc"), Just("flat")],
    )
        .prop_map(|(w, h, resize, filter, color, layout)| {
            let json = format!(
                r#"{{"width": {w}, "height": {h}, "resize": "{resize}", "filter": "{filter}",
                    "color": "{color}", "layout": "{layout}", "max_pixels": {MAX_PIXELS}}}"#
            );
            ImagePreprocess::from_config(serde_json::from_str(&json).unwrap()).unwrap()
        })
}

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A small valid image: gray, RGB, RGBA or 16-bit, as PNG or JPEG (JPEG
/// has no alpha or 16 bits: those are converted first), or a sample of
/// `models/digits/heldout`.
fn valid_images() -> impl Strategy<Value = Vec<u8>> {
    let generated = (1u32..40, 1u32..40, 0u8..4, any::<bool>(), any::<u8>()).prop_map(
        |(w, h, kind, jpeg, seed)| {
            let v = move |x: u32, y: u32, c: u32| {
                (x.wrapping_mul(31) ^ y.wrapping_mul(17) ^ c.wrapping_mul(7)) as u8 ^ seed
            };
            let image: DynamicImage = match kind {
                0 => GrayImage::from_fn(w, h, |x, y| Luma([v(x, y, 0)])).into(),
                1 => {
                    RgbImage::from_fn(w, h, |x, y| Rgb([v(x, y, 0), v(x, y, 1), v(x, y, 2)])).into()
                }
                2 => RgbaImage::from_fn(w, h, |x, y| {
                    Rgba([v(x, y, 0), v(x, y, 1), v(x, y, 2), v(x, y, 3)])
                })
                .into(),
                _ => DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(w, h, |x, y| {
                    Rgb([v(x, y, 0) as u16 * 257, v(x, y, 1) as u16 * 3, 65535])
                })),
            };
            if jpeg {
                encode(DynamicImage::ImageRgb8(image.to_rgb8()), ImageFormat::Jpeg)
            } else {
                encode(image, ImageFormat::Png)
            }
        },
    );
    let sample = (0usize..450).prop_map(|i| {
        let path = format!(
            "{}/../../models/digits/heldout/{i:04}.png",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    });
    prop_oneof![3 => generated, 1 => sample]
}

/// One edit of a valid file.
#[derive(Debug, Clone)]
enum Edit {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    /// Copy a run of the file over another place (duplicates chunks and markers).
    Splice(Index, Index, usize),
}

fn edits() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Edit::Flip(i, m)),
        (
            any::<Index>(),
            prop_oneof![Just(0u8), Just(0xff), any::<u8>()]
        )
            .prop_map(|(i, b)| Edit::Set(i, b)),
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), 1usize..64).prop_map(|(i, n)| Edit::Remove(i, n)),
        (any::<Index>(), any::<Index>(), 1usize..64).prop_map(|(a, b, n)| Edit::Splice(a, b, n)),
    ]
}

fn apply(mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        if data.is_empty() {
            break;
        }
        let len = data.len();
        match edit {
            Edit::Flip(i, m) => data[i.index(len)] ^= m,
            Edit::Set(i, b) => data[i.index(len)] = *b,
            Edit::Truncate(i) => data.truncate(i.index(len)),
            Edit::Insert(i, bytes) => {
                let at = i.index(len + 1);
                data.splice(at..at, bytes.iter().copied());
            }
            Edit::Remove(i, n) => {
                let at = i.index(len);
                data.drain(at..(at + n).min(len));
            }
            Edit::Splice(from, to, n) => {
                let (from, to) = (from.index(len), to.index(len));
                let n = (*n).min(len - from).min(len - to);
                let run = data[from..from + n].to_vec();
                data[to..to + n].copy_from_slice(&run);
            }
        }
    }
    data
}

fn content_types() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("image/png".to_owned()),
        Just("image/jpeg".to_owned()),
        Just("IMAGE/PNG; q=1".to_owned()),
        Just("image/gif".to_owned()),
        Just("application/octet-stream".to_owned()),
        ".{0,24}",
    ]
}

/// What every answer must be: the declared tensor, or an item error; and
/// the call's allocations bounded by the pixel limit, whatever the input
/// claims: a decoded image of at most `MAX_PIXELS` pixels of at most
/// 8 bytes (RGBA16), a few converted or resized copies of it, and the
/// decoder's own buffers, plus the input itself.
fn check(p: &ImagePreprocess, data: &[u8], content_type: &str) -> Result<(), TestCaseError> {
    let (answer, peak) = peak_of(|| p.process(data, content_type));
    let bound = 8 * 8 * MAX_PIXELS as usize + 4 * data.len() + (1 << 20);
    prop_assert!(
        peak <= bound,
        "allocated {peak} bytes at once for {} input bytes (bound {bound})",
        data.len()
    );
    match answer {
        Ok(tensor) => {
            prop_assert_eq!(&tensor.shape, &p.shape);
            prop_assert_eq!(tensor.name.as_str(), p.config.output.as_str());
            let values = tensor.to_f32().unwrap();
            let count: usize = p.shape.iter().map(|&d| d as usize).product();
            prop_assert_eq!(values.len(), count);
            prop_assert!(values.iter().all(|v| v.is_finite()));
        }
        Err(ItemError::InvalidInput(m) | ItemError::Unsupported(m)) => {
            prop_assert!(!m.is_empty());
        }
        Err(ItemError::Internal(m)) => prop_assert!(false, "internal error: {m}"),
    }
    Ok(())
}

/// A PNG or JPEG whose header declares `w` x `h` but holds the pixels of a
/// 1 x 1 image (the PNG's header checksum is fixed up, so the decoder
/// reads the dimensions).
fn lying_header(jpeg: bool, w: u32, h: u32) -> Vec<u8> {
    let one = GrayImage::from_pixel(1, 1, Luma([128]));
    if jpeg {
        let mut data = encode(one.into(), ImageFormat::Jpeg);
        // SOF0/SOF2: FF C0|C2, length (2), precision (1), height (2), width (2).
        let sof = data
            .windows(2)
            .position(|m| m[0] == 0xff && (m[1] == 0xc0 || m[1] == 0xc2))
            .expect("a JPEG has a start-of-frame marker");
        data[sof + 5..sof + 7].copy_from_slice(&(h.min(65535) as u16).to_be_bytes());
        data[sof + 7..sof + 9].copy_from_slice(&(w.min(65535) as u16).to_be_bytes());
        data
    } else {
        let mut data = encode(one.into(), ImageFormat::Png);
        data[16..20].copy_from_slice(&w.to_be_bytes());
        data[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&data[12..29]);
        data[29..33].copy_from_slice(&crc.to_be_bytes());
        data
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn arbitrary_bytes_give_the_declared_tensor_or_an_item_error(
        p in plugins(),
        prefix in prop_oneof![
            Just(Vec::new()),
            Just(b"\x89PNG\r\n\x1a\n".to_vec()),
            Just(b"\xff\xd8\xff".to_vec()),
            Just(b"GIF89a".to_vec()),
        ],
        data in prop::collection::vec(any::<u8>(), 0..2048),
        content_type in content_types(),
    ) {
        let data = [prefix, data].concat();
        check(&p, &data, &content_type)?;
    }

    #[test]
    fn mutated_images_give_the_declared_tensor_or_an_item_error(
        p in plugins(),
        image in valid_images(),
        edits in prop::collection::vec(edits(), 0..6),
        content_type in content_types(),
    ) {
        let data = apply(image, &edits);
        check(&p, &data, &content_type)?;
    }

    #[test]
    fn a_header_above_the_pixel_limit_is_refused_before_decoding(
        p in plugins(),
        jpeg in any::<bool>(),
        w in prop_oneof![1u32..70_000, Just(60_000), Just(u32::MAX >> 1), any::<u32>()],
        h in prop_oneof![1u32..70_000, Just(60_000), Just(u32::MAX >> 1), any::<u32>()],
    ) {
        let data = lying_header(jpeg, w, h);
        let declared = if jpeg { (w.min(65535), h.min(65535)) } else { (w, h) };
        let pixels = declared.0 as u64 * declared.1 as u64;
        check(&p, &data, "")?;
        if pixels > MAX_PIXELS {
            match p.process(&data, "") {
                Err(ItemError::InvalidInput(m)) => prop_assert!(
                    m.contains("max_pixels") || m.contains("cannot decode"),
                    "{m}"
                ),
                other => prop_assert!(false, "{declared:?}: {other:?}"),
            }
        }
    }
}

#[test]
fn a_60000_square_png_header_is_refused_without_allocating_its_pixels() {
    let p =
        ImagePreprocess::from_config(serde_json::from_str(r#"{"width": 4, "height": 4}"#).unwrap())
            .unwrap();
    let data = lying_header(false, 60_000, 60_000);
    let (answer, peak) = peak_of(|| p.process(&data, "image/png"));
    match answer {
        Err(ItemError::InvalidInput(m)) => {
            assert!(
                m.contains("3600000000 pixels") && m.contains("max_pixels"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(peak < 1 << 20, "allocated {peak} bytes");
}
