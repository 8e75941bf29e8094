//! The bundled plugins' work done natively, with the same crates: what the
//! plugin boundary is measured against.

use serde_json::{Value, json};
use sluice_agent::types::Tensor;

/// The digits preprocessing, natively: what the wasm plugin does.
pub(crate) fn native_digits_preprocess(png: &[u8]) -> Tensor {
    let image = image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .unwrap()
        .to_luma8();
    let values: Vec<f32> = image
        .pixels()
        .map(|p| p.0[0] as f32 * (1.0 / 240.0))
        .collect();
    Tensor::from_f32("input", vec![1, 64], &values)
}

/// The classification postprocessing, natively: top-3 with labels as JSON.
pub(crate) fn native_classify(t: &Tensor, labels: &[String]) -> Vec<u8> {
    let scores = t.f32_values().unwrap();
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let top: Vec<Value> = order[..3]
        .iter()
        .map(|&i| json!({"label": labels[i], "index": i, "score": scores[i]}))
        .collect();
    serde_json::to_vec(&json!({"label": labels[order[0]], "index": order[0], "score": scores[order[0]], "top": top})).unwrap()
}

/// MobileNetV2's preprocessing, natively: what the wasm plugin
/// (`plugins/image-preprocess`) does with the job's configuration, with the
/// same crates: a JPEG that still covers 224 x 224 at 1/2, 1/4 or 1/8 scale
/// decoded at that scale (jpeg-decoder), otherwise in full (image's
/// zune-jpeg); resized with fast_image_resize's bilinear convolution;
/// normalized; NCHW.
pub(crate) fn native_imagenet_preprocess(jpeg: &[u8]) -> Tensor {
    use fast_image_resize as fir;
    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];
    let mut decoder = jpeg_decoder::Decoder::new(jpeg);
    decoder.read_info().unwrap();
    let info = decoder.info().unwrap();
    let (w, h) = (info.width as u32, info.height as u32);
    let scaled = |len: u32, n: u32| (len * n - 1) / 8 + 1;
    let (rgb, w, h) = match [1, 2, 4]
        .into_iter()
        .find(|&n| scaled(w, n) >= 224 && scaled(h, n) >= 224)
    {
        Some(n) => {
            let (sw, sh) = decoder
                .scale(scaled(w, n) as u16, scaled(h, n) as u16)
                .unwrap();
            (decoder.decode().unwrap(), sw as u32, sh as u32)
        }
        None => (
            image::load_from_memory(jpeg).unwrap().to_rgb8().into_raw(),
            w,
            h,
        ),
    };
    let source = fir::images::Image::from_vec_u8(w, h, rgb, fir::PixelType::U8x3).unwrap();
    let mut resized = fir::images::Image::new(224, 224, fir::PixelType::U8x3);
    let bilinear = fir::ResizeAlg::Convolution(fir::FilterType::Bilinear);
    fir::Resizer::new()
        .resize(
            &source,
            &mut resized,
            &fir::ResizeOptions::new().resize_alg(bilinear),
        )
        .unwrap();
    let mut values = vec![0f32; 3 * 224 * 224];
    for (i, pixel) in resized.buffer().chunks_exact(3).enumerate() {
        for c in 0..3 {
            values[c * 224 * 224 + i] = (pixel[c] as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    Tensor::from_f32("input", vec![1, 3, 224, 224], &values)
}
