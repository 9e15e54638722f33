//! The accuracy report as markdown (the json is the `Report` itself).

use super::{CheckpointReport, Report, WeightsSize, CONFIGS};
use fluxbuild_contract::{Network, Variant};
use std::fmt::Write;

/// Full-size FLUX.1 transformers (diffusers layout, FLUX_FACTS tensor names): all parameters,
/// and those in the linear layers the default FP8 policy quantizes (all 2-D weights but the
/// embedders, `norm_out` and `proj_out`).
const FULL_SIZE: [(&str, u64, u64); 2] = [
    ("FLUX.1-dev", 11_901_408_320, 11_834_228_736),
    ("FLUX.1-schnell", 11_891_178_560, 11_834_228_736),
];

pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let s = &report.settings;
    let _ = writeln!(md, "# Accuracy of reduced precisions against fp32\n");
    let _ = writeln!(
        md,
        "Written by `fluxbuild accuracy` (fluxbuild {}), {}. Prompts: {}; {}×{} pixels, {} steps, seed {} \
         (fluxbuild noise v1), {} T5 tokens. FP8 activation scales: `fluxbuild calibrate` on the fp32 export \
         with {} ({} prompts, sha256 `{}`) at the same size and steps; per-tensor weight scales; embedders, \
         `norm_out` and `proj_out` kept in fp16.\n",
        report.fluxbuild_version,
        report.runtime,
        s.prompts
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", "),
        s.width,
        s.height,
        s.steps,
        s.seed,
        s.max_sequence_length,
        s.calibration_prompts.source,
        s.calibration_prompts.prompts.len(),
        s.calibration_prompts.sha256,
    );
    md.push_str(
        "Configurations. ONNX Runtime's CPU has no bf16 kernels for MatMul/Conv/Softmax and computes most fp16 \
         ops by casting to fp32 and back, eliding the casts between ops, so a plain fp16 graph there neither rounds \
         nor overflows as a GPU engine does:\n\
         - **fp16 (emulated)**, **bf16 (emulated)**: `export --emulate`: weights stored in the 16-bit type, every op \
         computed in fp32 and its output rounded to the 16-bit type (overflow to ±inf), as an engine with fp32 \
         accumulation and 16-bit storage. These are the honest numbers.\n\
         - **fp16 (ORT CPU)**: the deployable fp16 graph run as is, for contrast: mostly fp32 arithmetic, so it \
         looks better than a GPU would.\n\
         - **fp8**: the fp16 graph with every quantized linear as QuantizeLinear/DequantizeLinear (E4M3FN, \
         saturating) on activations and weights, the fp16 rest emulated as above. TensorRT fuses the pattern into \
         FP8 GEMMs; here the dequantized values are multiplied in fp32.\n\n\
         Per-network rows put one network at the precision and feed it the inputs the fp32 pipeline gave it \
         (the token ids, the transformer's inputs at the first and middle step, the final latents), so errors do \
         not compound; FP8 applies to the transformer only. End-to-end rows export the whole pipeline with \
         `--precision P` and its defaults (shown) and compare the 8-bit image with the fp32 pipeline's.\n\n\
         Rows marked *1000·σ, 1000·g rounded* run the **fp32** transformer with only its time and guidance \
         inputs rounded as the precision's graph rounds them before embedding them (the graph, like diffusers' \
         `timestep.to(dtype) * 1000`, multiplies in the model's type: in bf16 1000·3.5 is 3504, in fp16 \
         1000·0.6128 is 613). The tiny random-weight dev checkpoint is far more sensitive to its guidance \
         and time values than a trained one, so where its precision row is large, compare it with this row: \
         that share of the error is diffusers' own behaviour at that dtype, not the graph's arithmetic.\n\n",
    );
    for c in &report.checkpoints {
        checkpoint_section(&mut md, c);
    }
    md
}

fn checkpoint_section(md: &mut String, c: &CheckpointReport) {
    let _ = writeln!(md, "## `{}` ({})\n", c.checkpoint.display(), c.variant.name());
    let header: Vec<&str> = CONFIGS.iter().map(|k| k.name).collect();
    let _ = writeln!(md, "Relative error ‖y − y_fp32‖ / ‖y_fp32‖ on the same inputs:\n");
    let _ = writeln!(md, "| network | output | inputs | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|---|---|{}", "---:|".repeat(CONFIGS.len()));
    let mut rows: Vec<(&str, &str, &str)> = Vec::new();
    for e in &c.networks {
        let row = (e.network.as_str(), e.output.as_str(), e.inputs.as_str());
        if !rows.contains(&row) {
            rows.push(row);
        }
    }
    rows.sort_by_key(|(network, ..)| Network::ALL.iter().position(|n| n.name() == *network));
    for (network, output, inputs) in rows {
        let cells: Vec<String> = CONFIGS
            .iter()
            .map(|k| {
                c.networks
                    .iter()
                    .find(|e| {
                        (
                            e.network.as_str(),
                            e.output.as_str(),
                            e.inputs.as_str(),
                            e.config.as_str(),
                        ) == (network, output, inputs, k.name)
                    })
                    .map_or("—".into(), |e| format!("{:.2e}", e.relative_error))
            })
            .collect();
        let _ = writeln!(md, "| {network} | {output} | {inputs} | {} |", cells.join(" | "));
    }

    let _ = writeln!(md, "\nEnd to end against the fp32 pipeline:\n");
    let _ = writeln!(md, "| | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(CONFIGS.len()));
    let cell = |f: &dyn Fn(&super::EndToEnd) -> String| -> String {
        CONFIGS
            .iter()
            .map(|k| c.end_to_end.iter().find(|e| e.config == k.name).map_or("—".into(), f))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let precisions = |e: &super::EndToEnd| {
        e.precisions
            .iter()
            .map(|(n, p)| format!("{n} {p}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let psnr = |e: &super::EndToEnd| {
        e.psnr_db
            .iter()
            .map(|p| p.map_or("identical".into(), |v| format!("{v:.1}")))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let latents = |e: &super::EndToEnd| format!("{:.2e}", e.final_latents_relative_error);
    let _ = writeln!(md, "| networks | {} |", cell(&precisions));
    let _ = writeln!(md, "| image PSNR (dB), per prompt | {} |", cell(&psnr));
    let _ = writeln!(md, "| final latents, relative error | {} |", cell(&latents));

    let size = |name: &str| {
        c.transformer_weights
            .get(name)
            .copied()
            .unwrap_or(WeightsSize { file: 0, tensors: 0 })
    };
    let (fp32, fp16, fp8) = (size("fp32"), size(CONFIGS[1].name), size(CONFIGS[3].name));
    let _ = writeln!(
        md,
        "\nTransformer weights, bytes of the tensors in `model.onnx.data`: fp32 {} / fp16 {} / fp8 {}: **fp8/fp16 = {:.3}** (the files, which pad \
         every tensor to a 4 KiB page: {} / {} / {} B, {:.3}). The tiny checkpoint's embedders and final layer \
         (kept in fp16) and its biases and norms are a large share of its parameters; at full size they are \
         under 1%:\n",
        fp32.tensors,
        fp16.tensors,
        fp8.tensors,
        fp8.tensors as f64 / fp16.tensors.max(1) as f64,
        fp32.file,
        fp16.file,
        fp8.file,
        fp8.file as f64 / fp16.file.max(1) as f64,
    );
    let (name, total, quantized) = FULL_SIZE[match c.variant {
        Variant::Dev => 0,
        Variant::Schnell => 1,
    }];
    let fp8_bytes = quantized + 2 * (total - quantized);
    let _ = writeln!(
        md,
        "{name}: {total} parameters, {quantized} in quantized linears ({:.2}%): fp8 {fp8_bytes} B vs fp16 {} B, \
         ratio {:.4} (one fp16 scale per layer besides).\n",
        100.0 * quantized as f64 / total as f64,
        2 * total,
        fp8_bytes as f64 / (2 * total) as f64
    );
}
