//! # image-preprocess
//!
//! A Sluice preprocessor that turns one PNG or JPEG image into one `f32`
//! tensor: decode, convert to gray or RGB, resize (or check the size),
//! normalize each channel and lay the values out as NCHW, NHWC or flat.
//!
//! * The format is detected from the magic bytes; the item's content type is
//!   only used to name an unsupported format when the bytes are unknown.
//! * Images above `max_pixels` are refused from their header, before the
//!   pixels are decoded (decompression-bomb guard).
//! * A JPEG at least twice the target's size on both sides is decoded at
//!   1/2, 1/4 or 1/8 scale (DCT scaling, as Pillow's draft mode does), the
//!   smallest that still covers what the resize needs: most of the decoding
//!   work of a large photo is skipped. `draft = false` turns it off.
//! * Decoded pixels are converted to 8 bits per channel (16-bit PNGs are
//!   scaled down, alpha is dropped, RGB is turned to gray with Rec. 709
//!   weights), then resized with the configured filter (`fast_image_resize`:
//!   SIMD kernels, wasm simd128 included).
//! * `value = (pixel * scale - mean[c]) / std[c]` is evaluated in `f64` and
//!   rounded to `f32` once, through a 256-entry table per channel. So with
//!   `scale = 1/240` the value is exactly the `f32` nearest to `pixel / 240`.
//! * The tensor has a leading batch axis of 1: `[1, C, H, W]`, `[1, H, W, C]`
//!   or `[1, C*H*W]`.
//!
//! See `README.md` for the configuration keys.

use fast_image_resize as fir;
use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::imageops;
use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageFormat, ImageResult, Pixel};
use serde::Deserialize;
use sluice_guest::{ItemError, Preprocessor, RawInput, Tensor};
use std::io::Cursor;

/// How the decoded image is brought to `width` x `height`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Resize to exactly `width` x `height`, ignoring the aspect ratio.
    #[default]
    Exact,
    /// Keep the aspect ratio: scale until the image covers `width` x `height`
    /// (for a square target: the shorter side matches), then center-crop.
    ShorterSide,
    /// No resizing: the image must already be `width` x `height`.
    None,
}

/// Resampling filter: nearest neighbour, or a convolution with a triangle
/// (bilinear), Catmull-Rom or Lanczos3 kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filter {
    Nearest,
    #[default]
    Triangle,
    CatmullRom,
    Lanczos3,
}

impl Filter {
    fn algorithm(self) -> fir::ResizeAlg {
        use fir::{FilterType, ResizeAlg};
        match self {
            Filter::Nearest => ResizeAlg::Nearest,
            Filter::Triangle => ResizeAlg::Convolution(FilterType::Bilinear),
            Filter::CatmullRom => ResizeAlg::Convolution(FilterType::CatmullRom),
            Filter::Lanczos3 => ResizeAlg::Convolution(FilterType::Lanczos3),
        }
    }
}

/// Channels of the output tensor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Color {
    Gray,
    #[default]
    Rgb,
}

impl Color {
    fn channels(self) -> usize {
        match self {
            Color::Gray => 1,
            Color::Rgb => 3,
        }
    }
}

/// Order of the output values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// `[1, C, H, W]`
    #[default]
    Nchw,
    /// `[1, H, W, C]`
    Nhwc,
    /// `[1, C*H*W]`, values in NCHW order.
    Flat,
}

/// The plugin's `config` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the output tensor.
    #[serde(default = "default_output")]
    pub output: String,
    /// Target width in pixels.
    pub width: u32,
    /// Target height in pixels.
    pub height: u32,
    #[serde(default)]
    pub resize: Resize,
    #[serde(default)]
    pub filter: Filter,
    #[serde(default)]
    pub color: Color,
    #[serde(default)]
    pub layout: Layout,
    /// Multiplies the 8-bit pixel value.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Subtracted after scaling; one value for all channels or one per channel.
    #[serde(default = "default_mean")]
    pub mean: Vec<f64>,
    /// Divides after subtracting the mean; one value or one per channel.
    #[serde(default = "default_std")]
    pub std: Vec<f64>,
    /// Largest decoded image accepted, in pixels (width * height).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Decode large JPEGs at reduced scale (DCT scaling) when that still
    /// covers the target.
    #[serde(default = "default_draft")]
    pub draft: bool,
}

fn default_output() -> String {
    "input".into()
}
fn default_scale() -> f64 {
    1.0 / 255.0
}
fn default_mean() -> Vec<f64> {
    vec![0.0]
}
fn default_std() -> Vec<f64> {
    vec![1.0]
}
fn default_max_pixels() -> u64 {
    40_000_000
}
fn default_draft() -> bool {
    true
}

/// The preprocessor: a checked configuration plus one lookup table per
/// channel mapping an 8-bit pixel to its normalized value.
#[derive(Debug)]
pub struct ImagePreprocess {
    config: Config,
    /// `lut[c][p] = ((p * scale - mean[c]) / std[c]) as f32`
    lut: Vec<[f32; 256]>,
    shape: Vec<u32>,
}

impl ImagePreprocess {
    /// Check `config` and build the normalization tables.
    pub fn from_config(config: Config) -> Result<Self, String> {
        if config.output.is_empty() {
            return Err("`output` must not be empty".into());
        }
        if config.width == 0 || config.height == 0 {
            return Err(format!(
                "`width` and `height` must be at least 1 (got {} x {})",
                config.width, config.height
            ));
        }
        if config.max_pixels == 0 {
            return Err("`max_pixels` must be at least 1".into());
        }
        let pixels = config.width as u64 * config.height as u64;
        if pixels > config.max_pixels {
            return Err(format!(
                "`width` x `height` = {} x {} = {pixels} pixels is above `max_pixels` ({})",
                config.width, config.height, config.max_pixels
            ));
        }
        let channels = config.color.channels();
        let elements = pixels * channels as u64;
        if elements > u32::MAX as u64 {
            return Err(format!(
                "the output tensor would hold {elements} values, too many"
            ));
        }
        if !config.scale.is_finite() || config.scale == 0.0 {
            return Err(format!(
                "`scale` must be a finite, non-zero number (got {})",
                config.scale
            ));
        }
        let mean = per_channel("mean", &config.mean, channels, config.color)?;
        let std = per_channel("std", &config.std, channels, config.color)?;
        if let Some(c) = mean.iter().position(|m| !m.is_finite()) {
            return Err(format!("`mean[{c}]` must be finite (got {})", mean[c]));
        }
        if let Some(c) = std.iter().position(|s| !s.is_finite() || *s == 0.0) {
            return Err(format!(
                "`std[{c}]` must be finite and non-zero (got {})",
                std[c]
            ));
        }
        let lut = normalization_tables(config.scale, &mean, &std);
        for (c, table) in lut.iter().enumerate() {
            if let Some(p) = table.iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "`scale`, `mean` and `std` map pixel value {p} of channel {c} to {}, which is not a finite f32",
                    table[p]
                ));
            }
        }
        let (w, h, c) = (config.width, config.height, channels as u32);
        let shape = match config.layout {
            Layout::Nchw => vec![1, c, h, w],
            Layout::Nhwc => vec![1, h, w, c],
            Layout::Flat => vec![1, c * h * w],
        };
        Ok(Self { config, lut, shape })
    }

    /// Decode, fit and normalize one image.
    pub fn process(&self, data: &[u8], content_type: &str) -> Result<Tensor, ItemError> {
        let draft = self.draft_target();
        let image = decode_scaled(data, content_type, self.config.max_pixels, draft)?;
        let data = match self.config.color {
            Color::Gray => self.pixels_to_values(&self.fit(image.into_luma8())?),
            Color::Rgb => self.pixels_to_values(&self.fit(image.into_rgb8())?),
        };
        Ok(Tensor {
            name: self.config.output.clone(),
            dtype: sluice_guest::Dtype::Fp32,
            shape: self.shape.clone(),
            data,
        })
    }

    /// The size a JPEG may be decoded down to (see [`decode_scaled`]): the
    /// target for `exact`, nothing for `none` (the size is checked).
    /// `shorter-side` needs the cover size, which depends on the image's
    /// aspect ratio: scaling keeps the ratio, so covering the target on
    /// both sides covers it too.
    fn draft_target(&self) -> Option<(u32, u32)> {
        match (self.config.draft, self.config.resize) {
            (false, _) | (_, Resize::None) => None,
            (true, Resize::Exact | Resize::ShorterSide) => {
                Some((self.config.width, self.config.height))
            }
        }
    }

    /// Bring an 8-bit image to `width` x `height` as configured.
    fn fit<P>(&self, image: ImageBuffer<P, Vec<u8>>) -> Result<ImageBuffer<P, Vec<u8>>, ItemError>
    where
        P: Pixel<Subpixel = u8> + 'static,
    {
        let (tw, th) = (self.config.width, self.config.height);
        let (w, h) = image.dimensions();
        if (w, h) == (tw, th) {
            return Ok(image);
        }
        let resize = |image: ImageBuffer<P, Vec<u8>>, to: (u32, u32)| {
            resize(image, to, self.config.filter.algorithm())
        };
        match self.config.resize {
            Resize::None => Err(ItemError::invalid(format!(
                "image is {w} x {h}, expected exactly {tw} x {th} (resize = \"none\")"
            ))),
            Resize::Exact => Ok(resize(image, (tw, th))),
            Resize::ShorterSide => {
                let (rw, rh) = cover_size(w, h, tw, th);
                let resized = if (rw, rh) == (w, h) {
                    image
                } else {
                    resize(image, (rw, rh))
                };
                let (x, y) = ((rw - tw) / 2, (rh - th) / 2);
                Ok(imageops::crop_imm(&resized, x, y, tw, th).to_image())
            }
        }
    }

    /// Normalize interleaved 8-bit pixels (HWC) into the configured layout,
    /// as the tensor's little-endian `f32` bytes (written once, no
    /// intermediate `f32` vector).
    fn pixels_to_values<P>(&self, image: &ImageBuffer<P, Vec<u8>>) -> Vec<u8>
    where
        P: Pixel<Subpixel = u8>,
    {
        let raw: &[u8] = image.as_raw();
        let channels = self.lut.len();
        let mut out = Vec::with_capacity(raw.len() * 4);
        match self.config.layout {
            Layout::Nhwc => {
                for pixel in raw.chunks_exact(channels) {
                    for (table, &p) in self.lut.iter().zip(pixel) {
                        out.extend_from_slice(&table[p as usize].to_le_bytes());
                    }
                }
            }
            Layout::Nchw | Layout::Flat => {
                for (c, table) in self.lut.iter().enumerate() {
                    for &p in raw.iter().skip(c).step_by(channels) {
                        out.extend_from_slice(&table[p as usize].to_le_bytes());
                    }
                }
            }
        }
        out
    }
}

/// `values` broadcast to one per channel: a list of 1 or of `channels`.
fn per_channel(
    key: &str,
    values: &[f64],
    channels: usize,
    color: Color,
) -> Result<Vec<f64>, String> {
    match values.len() {
        1 => Ok(vec![values[0]; channels]),
        n if n == channels => Ok(values.to_vec()),
        n => Err(format!(
            "`{key}` has {n} values; with color = \"{}\" it needs {}",
            match color {
                Color::Gray => "gray",
                Color::Rgb => "rgb",
            },
            if channels == 1 {
                "1".to_string()
            } else {
                format!("1 or {channels}")
            }
        )),
    }
}

/// One table per channel: `((p * scale - mean) / std)` in `f64`, rounded to
/// `f32` once.
pub fn normalization_tables(scale: f64, mean: &[f64], std: &[f64]) -> Vec<[f32; 256]> {
    mean.iter()
        .zip(std)
        .map(|(&m, &s)| {
            let mut table = [0f32; 256];
            for (p, v) in table.iter_mut().enumerate() {
                *v = ((p as f64 * scale - m) / s) as f32;
            }
            table
        })
        .collect()
}

/// The smallest size with the image's aspect ratio that covers
/// `tw` x `th`: each side is at least its target.
pub fn cover_size(w: u32, h: u32, tw: u32, th: u32) -> (u32, u32) {
    let s = f64::max(tw as f64 / w as f64, th as f64 / h as f64);
    let rw = ((w as f64 * s).round() as u32).max(tw);
    let rh = ((h as f64 * s).round() as u32).max(th);
    (rw, rh)
}

/// Resize 8-bit `image` to `to` with `algorithm` (gray or RGB pixels).
fn resize<P>(
    image: ImageBuffer<P, Vec<u8>>,
    to: (u32, u32),
    algorithm: fir::ResizeAlg,
) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    let pixel_type = match P::CHANNEL_COUNT {
        1 => fir::PixelType::U8,
        3 => fir::PixelType::U8x3,
        4 => fir::PixelType::U8x4,
        _ => fir::PixelType::U8x2,
    };
    let (w, h) = image.dimensions();
    let source = fir::images::Image::from_vec_u8(w, h, image.into_raw(), pixel_type)
        .expect("an image buffer holds its pixels");
    let mut target = fir::images::Image::new(to.0, to.1, pixel_type);
    fir::Resizer::new()
        .resize(
            &source,
            &mut target,
            &fir::ResizeOptions::new().resize_alg(algorithm),
        )
        .expect("same pixel type on both sides");
    ImageBuffer::from_raw(to.0, to.1, target.into_vec())
        .expect("the resized buffer holds its pixels")
}

/// Decode PNG or JPEG `data`, refusing images above `max_pixels` from their
/// header. The format comes from the magic bytes; `content_type` only helps
/// to name an unsupported format.
pub fn decode(data: &[u8], content_type: &str, max_pixels: u64) -> Result<DynamicImage, ItemError> {
    decode_scaled(data, content_type, max_pixels, None)
}

/// Like [`decode`]; a JPEG at least twice `draft` on both sides is decoded
/// at the smallest of 1/2, 1/4 and 1/8 scale that is still at least `draft`
/// (DCT scaling: the decoder skips the detail it would throw away).
pub fn decode_scaled(
    data: &[u8],
    content_type: &str,
    max_pixels: u64,
    draft: Option<(u32, u32)>,
) -> Result<DynamicImage, ItemError> {
    if let (Some(target), Ok(ImageFormat::Jpeg)) = (draft, image::guess_format(data)) {
        if let Some(image) = decode_jpeg_scaled(data, max_pixels, target)? {
            return Ok(image);
        }
    }
    if data.is_empty() {
        return Err(ItemError::invalid(
            "cannot decode image: the input is empty",
        ));
    }
    match image::guess_format(data) {
        Ok(ImageFormat::Png) => {
            decode_with(PngDecoder::new(Cursor::new(data)), "image/png", max_pixels)
        }
        Ok(ImageFormat::Jpeg) => decode_with(
            JpegDecoder::new(Cursor::new(data)),
            "image/jpeg",
            max_pixels,
        ),
        Ok(other) => Err(ItemError::unsupported(format!(
            "{} images are not supported (detected from the data); this plugin decodes PNG and JPEG",
            other.to_mime_type()
        ))),
        Err(_) => {
            let essence = sluice_guest::media_type(content_type);
            let ours = ["image/png", "image/jpeg", "image/jpg", "image/pjpeg"];
            if essence.starts_with("image/") && !ours.contains(&essence.as_str()) {
                Err(ItemError::unsupported(format!(
                    "content type {essence} is not supported; this plugin decodes PNG and JPEG"
                )))
            } else {
                let head: Vec<String> = data.iter().take(8).map(|b| format!("{b:02x}")).collect();
                Err(ItemError::invalid(format!(
                    "cannot decode image: the data is neither PNG nor JPEG (it starts with {})",
                    head.join(" ")
                )))
            }
        }
    }
}

/// The longest decoder message kept in an item's error.
const MAX_ERROR_CHARS: usize = 160;

/// A decoder's message as one short line: the `png` crate prints chunk
/// types as Rust structs (`ChunkType { type: IHDR, critical: true, ... }`)
/// and repeats what the caller already says; an operator reading an item's
/// error wants the cause.
pub fn short_error(message: &str) -> String {
    let mut text = message
        .replace("Format error decoding Png: ", "")
        .replace("Format error decoding Jpeg: ", "");
    while let Some(start) = text.find("ChunkType { type: ") {
        let rest = &text[start + "ChunkType { type: ".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let end = text[start..]
            .find('}')
            .map_or(text.len(), |i| start + i + 1);
        text.replace_range(start..end, &name);
    }
    let mut text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > MAX_ERROR_CHARS {
        text = text.chars().take(MAX_ERROR_CHARS).collect::<String>() + "...";
    }
    text
}

/// A JPEG decoded at reduced scale, or `None` when no scale below 1 covers
/// `target` on both sides (or it is a kind the scaling decoder does not
/// read, e.g. CMYK: the full decoder takes it, with its own messages).
fn decode_jpeg_scaled(
    data: &[u8],
    max_pixels: u64,
    target: (u32, u32),
) -> Result<Option<DynamicImage>, ItemError> {
    use jpeg_decoder::PixelFormat;
    let mut decoder = jpeg_decoder::Decoder::new(data);
    if decoder.read_info().is_err() {
        return Ok(None);
    }
    let Some(info) = decoder.info() else {
        return Ok(None);
    };
    let (w, h) = (info.width as u32, info.height as u32);
    // Size at scale n/8, as the decoder computes it; the smallest n whose
    // size covers the target on both sides (the decoder's own choice needs
    // only one side).
    let scaled = |len: u32, n: u32| (len * n - 1) / 8 + 1;
    let Some(n) = [1, 2, 4]
        .into_iter()
        .find(|&n| scaled(w, n) >= target.0 && scaled(h, n) >= target.1)
    else {
        return Ok(None);
    };
    if !matches!(info.pixel_format, PixelFormat::L8 | PixelFormat::RGB24) {
        return Ok(None);
    }
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(ItemError::invalid(format!(
            "image is {w} x {h} = {pixels} pixels, above max_pixels ({max_pixels}); refused before decoding"
        )));
    }
    let cannot = |e: jpeg_decoder::Error| {
        ItemError::invalid(format!(
            "cannot decode image/jpeg: {}",
            short_error(&e.to_string())
        ))
    };
    // JPEG sides are u16, so their scaled sizes are too.
    let (sw, sh) = decoder
        .scale(scaled(w, n) as u16, scaled(h, n) as u16)
        .map_err(cannot)?;
    let raw = decoder.decode().map_err(cannot)?;
    let (sw, sh) = (sw as u32, sh as u32);
    let image = match info.pixel_format {
        PixelFormat::L8 => ImageBuffer::from_raw(sw, sh, raw).map(DynamicImage::ImageLuma8),
        _ => ImageBuffer::from_raw(sw, sh, raw).map(DynamicImage::ImageRgb8),
    };
    image.map(Some).ok_or_else(|| {
        ItemError::invalid("cannot decode image/jpeg: the decoder returned too few pixels")
    })
}

fn decode_with<D: ImageDecoder>(
    decoder: ImageResult<D>,
    mime: &str,
    max_pixels: u64,
) -> Result<DynamicImage, ItemError> {
    let cannot = |e: image::ImageError| {
        ItemError::invalid(format!(
            "cannot decode {mime}: {}",
            short_error(&e.to_string())
        ))
    };
    let decoder = decoder.map_err(cannot)?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(ItemError::invalid(format!(
            "image is {w} x {h} = {pixels} pixels, above max_pixels ({max_pixels}); refused before decoding"
        )));
    }
    if pixels == 0 {
        return Err(ItemError::invalid(format!(
            "cannot decode {mime}: the image is {w} x {h}"
        )));
    }
    DynamicImage::from_decoder(decoder).map_err(cannot)
}

impl Preprocessor for ImagePreprocess {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Self::from_config(config)
    }

    fn preprocess(&mut self, input: RawInput) -> Result<Vec<Tensor>, ItemError> {
        Ok(vec![self.process(&input.data, &input.meta.content_type)?])
    }
}

sluice_guest::export_preprocessor!(ImagePreprocess);
// The options `sluice plugin inspect` lists (a unit test checks them against `Config`).
sluice_guest::options!("../options.json");

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
